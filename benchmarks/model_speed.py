"""Score-model speed on pt111_heptamer (float32, CPU unless JAX finds an accelerator).

(a) forward `apply` with a precomputed context, batch 128: ms per structure, the cost
    of one reverse-diffusion step per sample;
(b) jit(value_and_grad) of a weighted-DSM-like loss, mean over the batch of
    ||z + var * score(x_t, t)||^2, wrt params, batch 16, context included: ms per step.
Then a breakdown by ablation (the same computation without some part). Timings are
medians (and minima) of repeated calls after warm-up, interleaved round-robin so that
load from other processes hits every variant alike.

    python benchmarks/model_speed.py [--repeats N] [--default-malloc] [--trace DIR]

By default the process first asks glibc to keep freed heap memory (M_TOP_PAD, see
`keep_heap_memory`); --default-malloc measures without that.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from godiff_jax.model import PaiNNScore, ScoreModel, ScoreModelConfig, count_params  # noqa: E402
from godiff_jax.runtime import keep_heap_memory  # noqa: E402
from godiff_jax.system import pt111_heptamer  # noqa: E402


def timings(fns: dict, repeats: int, warmup: int = 2) -> dict[str, tuple[float, float]]:
    """{name: (median, min)} wall seconds of each zero-argument callable, interleaved."""
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def batch(key, system, n: int):
    """Noisy training-like positions x_t, times t, noise z and variances var(t)."""
    k1, k2, k3 = jax.random.split(key, 3)
    u = jax.random.uniform(k1, (n, system.n_mobile, 3))
    xy = u[..., :2] @ jnp.asarray(system.cell[:2, :2])
    z_lo, z_hi = system.box_lo[2], system.box_hi[2]
    x0 = jnp.concatenate([xy, z_lo + u[..., 2:] * (z_hi - z_lo)], -1)
    t = jax.random.uniform(k2, (n,), minval=1e-5, maxval=1.0)
    noise = jax.random.normal(k3, x0.shape)
    var = (0.01 + 0.99 * t) ** 2 - 0.01**2
    return x0 + jnp.sqrt(var)[:, None, None] * noise, t, noise, var


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--default-malloc", action="store_true", help="skip M_TOP_PAD")
    parser.add_argument("--trace", help="also write a jax.profiler trace of (a), (b) here")
    args = parser.parse_args()
    tuned = False if args.default_malloc else keep_heap_memory()

    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"cpu count: {os.cpu_count()}, load average: {os.getloadavg()}")
    print(f"machine: {platform.machine()} {platform.processor()}")
    print(f"jax {jax.__version__}, devices: {jax.devices()}")
    print(f"glibc M_TOP_PAD=512 MiB (keep heap memory): {tuned}")

    system = pt111_heptamer()
    config = ScoreModelConfig()
    t0 = time.perf_counter()
    model = ScoreModel(system, config)
    build_s = time.perf_counter() - t0
    params = model.init(jax.random.PRNGKey(0))
    print(
        f"{system.name}: {system.n_template} template + {system.n_mobile} mobile atoms; "
        f"{count_params(params)} parameters; {config}\n"
        f"  template rows (translation classes) {len(model.template_rows)}, "
        f"per-row template messages {model.net.template_row_sums}\n"
        f"  template candidates per mobile atom Kc={model.n_candidates} "
        f"(grid {model.grid.shape}), template neighbours Kt={model.graph.nbr.shape[1]}, "
        f"mobile images S={len(model.shifts)}; host-side build {build_s:.2f} s"
    )

    ctx = jax.jit(model.context)(params)
    x128, t128, _, _ = batch(jax.random.PRNGKey(1), system, 128)
    x128 = system.confine(x128)  # the sampler keeps positions in the box
    x16, t16, z16, var16 = batch(jax.random.PRNGKey(2), system, 16)

    def dsm(score):
        return jnp.mean(jnp.sum((z16 + var16[:, None, None] * score) ** 2, axis=(-1, -2)))

    # Ablations: the same network with parts switched off.
    unchunked = ScoreModel(system, ScoreModelConfig(batch_chunk=0))
    pairwise = ScoreModel(
        system, ScoreModelConfig(template_symmetry=False, template_row_sums=False)
    )

    def no_template(p, c, x, t):
        """The model without template messages."""
        r_m = model._mobile_vectors(x.astype(jnp.float32))
        args = (c, None, None, r_m, len(model.shifts), t)
        return model.net.apply({"params": p}, *args, method=PaiNNScore.mobile)

    def ctx_loss(p):
        return sum(jnp.sum(v**2) for v in jax.tree.leaves(model.context(p)))

    apply = jax.jit(model.apply)
    apply_unchunked = jax.jit(unchunked.apply)
    apply_no_template = jax.jit(no_template)
    context = jax.jit(model.context)
    step = jax.jit(jax.value_and_grad(lambda p: dsm(model(p, x16, t16))))
    step_pairwise = jax.jit(jax.value_and_grad(lambda p: dsm(pairwise(p, x16, t16))))
    apply_pairwise = jax.jit(pairwise.apply)
    ctx_pairwise = jax.jit(pairwise.context)(params)
    ctx_step = jax.jit(jax.value_and_grad(ctx_loss))
    fixed_ctx = jax.lax.stop_gradient(ctx)
    step_fixed_ctx = jax.jit(jax.value_and_grad(lambda p: dsm(model.apply(p, fixed_ctx, x16, t16))))
    step_no_template = jax.jit(jax.value_and_grad(lambda p: dsm(no_template(p, ctx, x16, t16))))
    cases = {  # name: (callable, structures per call)
        "(a) forward B=128": (lambda: apply(params, ctx, x128, t128), 128),
        "(b) train step B=16": (lambda: step(params), 1),
        "forward B=128, template messages unchunked": (
            lambda: apply_unchunked(params, ctx, x128, t128),
            128,
        ),
        "forward B=128, no template messages": (
            lambda: apply_no_template(params, ctx, x128, t128),
            128,
        ),
        "forward B=128, pairwise template (72 rows)": (
            lambda: apply_pairwise(params, ctx_pairwise, x128, t128),
            128,
        ),
        "train step B=16, pairwise template": (lambda: step_pairwise(params), 1),
        "forward B=16 (context given)": (lambda: apply(params, ctx, x16, t16), 16),
        "context forward": (lambda: context(params), 1),
        "context value_and_grad": (lambda: ctx_step(params), 1),
        "train B=16, context held fixed": (lambda: step_fixed_ctx(params), 1),
        "train B=16, no template messages": (lambda: step_no_template(params), 1),
    }
    fns = {name: fn for name, (fn, _) in cases.items()}
    res = timings(fns, args.repeats)
    print("\nms: median (min) over interleaved repeats")
    for name, (med, lo) in res.items():
        per = cases[name][1]
        extra = (
            f"  = {med * 1e3 / per:.3f} ({lo * 1e3 / per:.3f}) ms per structure" if per > 1 else ""
        )
        print(f"  {name:38s} {med * 1e3:8.2f} ({lo * 1e3:.2f}){extra}")

    if args.trace:
        with jax.profiler.trace(args.trace, create_perfetto_trace=True):
            for _ in range(3):
                jax.block_until_ready(fns["(a) forward B=128"]())
                jax.block_until_ready(fns["(b) train step B=16"]())
        print(f"trace written to {args.trace}")


if __name__ == "__main__":
    main()
