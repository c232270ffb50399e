"""Where the 8-seed vmapped training step spends its time (issue 16, item 3).

The heptamer at the paper's model size, a buffer of 64, batch 16, as `GODiff.update`
trains it: seeds vmapped, `train.train_steps` as one scan (or the while loop of the
training stop). Each variant is one jitted program of `--steps` steps over `--seeds`
seeds; ms per step (all seeds), medians of interleaved repeats:

- full: train_steps as the default run calls it (scan)
- full + stop rule: the while loop with the momentum-consensus stop (never firing here)
- loss + gradient only: the same minibatches and loss, value_and_grad in a scan, no
  optimizer (the difference to `full` is the optimizer, the guard and the bookkeeping)
- loss only: the forward pass of the same loss

With `--batch-sizes 16,32,64` only `full` runs, once per batch size, to price fewer
steps on larger minibatches (the same structures seen per iteration):

    python benchmarks/train_profile.py [--seeds 8] [--steps 50] [--repeats 5]
    python benchmarks/train_profile.py --batch-sizes 16,32,64
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from model_speed import timings  # noqa: E402

from godiff_jax.config import PAPER_SETTINGS  # noqa: E402
from godiff_jax.loss import weighted_dsm_loss  # noqa: E402
from godiff_jax.runtime import keep_heap_memory, machine_summary  # noqa: E402
from godiff_jax.sde import sample_prior  # noqa: E402
from godiff_jax.search import GODiff  # noqa: E402
from godiff_jax.sharding import place, plan  # noqa: E402
from godiff_jax.system import pt111_heptamer  # noqa: E402
from godiff_jax.train import StopRule, train_steps  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-sizes", default="", help="comma list: time `full` per batch size")
    args = p.parse_args()
    keep_heap_memory()
    system = pt111_heptamer()
    config = PAPER_SETTINGS["heptamer"]
    search = GODiff(system, config)
    model, opt = search.model, search.optimizer
    n, k, bs = args.seeds, config.buffer_size, config.batch_size
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    states = jax.vmap(lambda key: search.init_state(key).train)(keys)
    x = jax.vmap(lambda key: sample_prior(key, system, k))(keys)
    w = jnp.ones((n, k))
    # Several devices (XLA_FLAGS=--xla_force_host_platform_device_count=2 on a CPU): the
    # seeds are split over them as `runner.run` splits them.
    layout = plan(n, config.n_samples)
    states, keys, x, w = place((states, keys, x, w), layout)

    def full(stop, batch=bs):
        def one(state, key, xb, wb):
            return train_steps(model, opt, state, key, xb, wb, args.steps, batch, stop=stop)[0]

        return jax.jit(jax.vmap(one))

    def loss_only(grad: bool):
        def one(state, key, xb, wb):
            def step(c, i):
                kk = jax.random.fold_in(key, i)
                idx = jax.random.permutation(kk, k)[:bs]

                def f(p):
                    return weighted_dsm_loss(model, p, kk, xb[idx], wb[idx], sde=config.sde)

                out = jax.value_and_grad(f)(state.params) if grad else (f(state.params), 0.0)
                return c + out[0] + sum(jnp.sum(g) for g in jax.tree_util.tree_leaves(out[1])), None

            return jax.lax.scan(step, jnp.zeros(()), jnp.arange(args.steps))[0]

        return jax.jit(jax.vmap(one))

    if args.batch_sizes:
        sizes = [bs] + [int(b) for b in args.batch_sizes.split(",") if int(b) != bs]
        variants = {("full" if b == bs else f"full, batch {b}"): full(None, b) for b in sizes}
    else:
        variants = {
            "full": full(None),
            "full + stop rule": full(StopRule(50, 10**6, 0.5)),
            "loss + gradient only": loss_only(True),
            "loss only": loss_only(False),
        }
    fns = {name: (lambda f=f: f(states, keys, x, w)) for name, f in variants.items()}
    res = timings(fns, args.repeats, warmup=1)
    print(machine_summary())
    print(
        f"{n} seeds vmapped, {args.steps} steps, batch {bs}, buffer {k}, layout {layout.mode} "
        f"over {layout.n_devices} device(s); ms per step (all seeds)"
    )
    base = res["full"][0]
    for name, (med, lo) in res.items():
        per = 1e3 * med / args.steps
        print(f"{name:24s} {per:8.2f}  (min {1e3 * lo / args.steps:.2f})  {med / base:5.2f}x full")


if __name__ == "__main__":
    main()
