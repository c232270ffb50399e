"""Cost of running S seeds as one vmapped program against S separate runs (heptamer, CPU).

    python benchmarks/seed_vmap_speed.py [--seeds 1 2 4 8] [--train-steps 200] [--reverse-steps 50]

Times the two jitted, seed-vmapped phases `godiff_jax.search.run` uses: sampling (paper batch
128, fewer reverse steps) and update (archive + buffer redraw + training, fewer steps), at the
paper's model size. Prints seconds per phase call and the ratio to S x the one-seed time
(below 1: vmapping the seeds is cheaper than running them one after another).
"""

import argparse
import statistics
import time

import jax

from godiff_jax import pt111_heptamer
from godiff_jax.config import SearchConfig
from godiff_jax.evaluate import JaxEvaluator
from godiff_jax.potentials.emt import emt_energy_fn
from godiff_jax.runner import compiled_phases
from godiff_jax.runtime import keep_heap_memory, machine_summary


def timeit(repeats, fn, *args):
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--reverse-steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--seed-batch", type=int, default=None, help="seeds vmapped together (default: run's)"
    )
    args = p.parse_args()
    keep_heap_memory()
    print(machine_summary())
    system = pt111_heptamer()
    config = SearchConfig().replace(
        train_steps=args.train_steps, n_reverse_steps=args.reverse_steps
    )
    evaluator = JaxEvaluator(emt_energy_fn(system))
    base = {}
    for s in args.seeds:
        search, sample_fn, eval_fn, _, update_fn = compiled_phases(
            system, config, evaluator, s, args.seed_batch
        )
        state = jax.jit(jax.vmap(search.init_state))(jax.random.split(jax.random.PRNGKey(0), s))
        x, ok = sample_fn(state)
        e, f = eval_fn(x)
        t_sample = timeit(args.repeats, sample_fn, state)
        t_update = timeit(args.repeats, update_fn, state, x, e, f, ok)
        base.setdefault("sample", t_sample)
        base.setdefault("update", t_update)
        per_step = t_update / args.train_steps * 1e3
        per_rs = t_sample / (config.n_samples * args.reverse_steps) * 1e3
        print(
            f"seeds {s}: sample {t_sample:.2f} s ({per_rs:.3f} ms per structure-step per seed-batch), "
            f"update {t_update:.2f} s ({per_step:.1f} ms per training step); "
            f"vs {s} x one seed: sample {t_sample / (s * base['sample']):.2f}, "
            f"update {t_update / (s * base['update']):.2f}"
        )


if __name__ == "__main__":
    main()
