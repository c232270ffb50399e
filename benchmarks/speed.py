"""Speed of the GO-Diff core on the heptamer at the paper's model size (float32).

    python benchmarks/speed.py [--batch 128] [--steps 100] [--train-steps 100] [--repeats 5]

Prints ms per structure per reverse-diffusion step (the whole `reverse_sample` scan,
batch 128), unguided and with force-field guidance (the L-BFGS corrector and a second
model call per step) as a ratio in the same run, and ms per training step (`train_steps`
scan, batch 16 from a 64 buffer; the force head's step on the same batch size), plus the
pieces they are made of (template context, one score call, one loss+grad). Last, one
score call and a training step with two-way template messages
(`ScoreModelConfig(template_receives=True)`) as ratios to the one-way model.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from godiff_jax import pt111_heptamer
from godiff_jax.buffer import add_to_archive, init_archive
from godiff_jax.guidance import ForceHead, force_corrector, predicted_forces, train_force_head
from godiff_jax.loss import weighted_dsm_loss
from godiff_jax.model import ScoreModel, ScoreModelConfig
from godiff_jax.runtime import keep_heap_memory, machine_summary
from godiff_jax.sampler import reverse_sample
from godiff_jax.sde import sample_prior
from godiff_jax.train import init_train_state, make_optimizer, train_steps


def timeit(fn, repeats):
    jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=100, help="reverse steps timed")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--train-steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    keep_heap_memory()
    print(machine_summary())

    system = pt111_heptamer()
    model = ScoreModel(system, ScoreModelConfig())
    params = model.init(jax.random.PRNGKey(0))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    print(
        f"heptamer: {system.n_template} template + {system.n_mobile} mobile atoms; {n_params} parameters"
    )

    @jax.jit
    def sample(params, key):
        ctx = model.context(params)
        return reverse_sample(
            key, lambda x, t: model.apply(params, ctx, x, t), system, args.batch, n_steps=args.steps
        )

    head = ForceHead(model.config.features)
    head_params = head.init(jax.random.PRNGKey(3))

    @jax.jit
    def sample_guided(params, head_params, key):
        ctx = model.context(params)
        forces = predicted_forces(model, head, params, head_params, ctx)
        return reverse_sample(
            key,
            lambda x, t: model.apply(params, ctx, x, t),
            system,
            args.batch,
            n_steps=args.steps,
            corrector=force_corrector(forces, system),
        )

    key = jax.random.PRNGKey(1)
    t_sample = timeit(lambda: sample(params, key), args.repeats)
    per = t_sample / (args.batch * args.steps) * 1e3
    print(
        f"reverse diffusion: {per:.3f} ms per structure-step (batch {args.batch}, {args.steps} steps, {t_sample:.2f} s)"
    )
    t_guided = timeit(lambda: sample_guided(params, head_params, key), args.repeats)
    per_g = t_guided / (args.batch * args.steps) * 1e3
    print(
        f"  with force-field guidance: {per_g:.3f} ms per structure-step, "
        f"{t_guided / t_sample:.2f}x unguided"
    )

    x = sample_prior(key, system, args.batch)
    t = jnp.full((args.batch,), 0.5, jnp.float32)
    context = jax.jit(model.context)
    ctx = context(params)
    t_ctx = timeit(lambda: context(params), args.repeats)
    apply = jax.jit(model.apply)
    t_apply = timeit(lambda: apply(params, ctx, x, t), args.repeats)
    print(
        f"  pieces: template context {t_ctx * 1e3:.2f} ms per call; one score call {t_apply * 1e3:.2f} ms "
        f"({t_apply / args.batch * 1e3:.3f} ms per structure)"
    )

    buffer = sample_prior(jax.random.PRNGKey(2), system, 64)
    weights = jnp.ones(64)
    opt = make_optimizer()
    state = init_train_state(params, opt)
    train = jax.jit(
        lambda s, k: train_steps(
            model, opt, s, k, buffer, weights, args.train_steps, args.train_batch
        )
    )
    t_train = timeit(lambda: train(state, key), args.repeats)
    print(
        f"training: {t_train / args.train_steps * 1e3:.2f} ms per step (batch {args.train_batch}, {args.train_steps} steps)"
    )

    archive = init_archive(64, system.n_mobile)
    archive = add_to_archive(
        archive, buffer, jnp.zeros(64), jnp.ones_like(buffer), jnp.ones(64, bool), 0
    )
    train_f = jax.jit(
        lambda p, h, k: train_force_head(
            model, head, opt, p, h, k, archive, args.train_steps, args.train_batch
        )
    )
    t_force = timeit(lambda: train_f(params, head_params, key), args.repeats)
    print(
        f"  force head: {t_force / args.train_steps * 1e3:.2f} ms per step "
        f"({t_force / t_train:.2f}x a score step)"
    )

    grad = jax.jit(
        jax.value_and_grad(
            lambda p, k: weighted_dsm_loss(
                model, p, k, buffer[: args.train_batch], weights[: args.train_batch]
            )
        )
    )
    t_grad = timeit(lambda: grad(params, key), args.repeats)
    updates = jax.jit(lambda g, s, p: opt.update(g, s, p, value=jnp.zeros(())))
    g = grad(params, key)[1]
    t_upd = timeit(lambda: updates(g, state.opt_state, params), args.repeats)
    print(f"  pieces: loss+grad {t_grad * 1e3:.2f} ms; optimizer update {t_upd * 1e3:.2f} ms")

    # Two-way template messages cost tens of times more: one score call and 10 training
    # steps of each model, as ratios (the reverse step is one score call per step).
    two = ScoreModel(system, ScoreModelConfig(template_receives=True))
    apply2 = jax.jit(two.apply)
    t_apply2 = timeit(lambda: apply2(params, two.context(params), x, t), args.repeats)
    n = 10
    train1 = jax.jit(
        lambda s, k: train_steps(model, opt, s, k, buffer, weights, n, args.train_batch)
    )
    train2 = jax.jit(lambda s, k: train_steps(two, opt, s, k, buffer, weights, n, args.train_batch))
    t_tr1 = timeit(lambda: train1(state, key), args.repeats)
    t_tr2 = timeit(lambda: train2(state, key), args.repeats)
    print(
        f"two-way template messages ({len(two._receivers[0])} template atoms receive): one score "
        f"call {t_apply2 / args.batch * 1e3:.3f} ms per structure, {t_apply2 / t_apply:.1f}x "
        f"one-way; training {t_tr2 / n * 1e3:.1f} ms per step, {t_tr2 / t_tr1:.1f}x one-way"
    )


if __name__ == "__main__":
    main()
