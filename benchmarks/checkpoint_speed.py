"""Checkpoint write and read time for the 8-seed heptamer run state: pickle (before) against
the verified msgpack container (godiff_jax.checkpoint).

    python benchmarks/checkpoint_speed.py [--seeds 8] [--repeats 5]

The state is the paper-settings one (archive of 2,560 structures per seed, PaiNN 64x4
parameters, AdamW moments). "before" is what io.save_checkpoint did: pickle.dumps, temp
file, fsync, rename; and pickle.load. "after" writes, reads back and verifies the hash,
keeps the previous file, fsyncs the directory; read checks every leaf against the template.
"""

import argparse
import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from godiff_jax import checkpoint, pt111_heptamer
from godiff_jax.config import SearchConfig
from godiff_jax.runtime import machine_summary
from godiff_jax.search import GODiff


def median_time(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    search = GODiff(pt111_heptamer(), SearchConfig())
    keys = jnp.stack([jax.random.PRNGKey(s) for s in range(args.seeds)])
    state = jax.device_get(jax.jit(jax.vmap(search.init_state))(keys))
    template = jax.eval_shape(jax.vmap(search.init_state), keys)
    meta = {"seeds": list(range(args.seeds)), "iteration": 1}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)

        def pickle_write():
            host = jax.tree_util.tree_map(np.asarray, state)
            tmp = d / ".checkpoint.pkl.tmp"
            with open(tmp, "wb") as f:
                f.write(pickle.dumps(host, protocol=5))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, d / "checkpoint.pkl")

        def pickle_read():
            with open(d / "checkpoint.pkl", "rb") as f:
                return pickle.load(f)  # our own file, written just above

        def new_write():
            checkpoint.save_checkpoint(d, state, meta)

        def new_read():
            return checkpoint.load_checkpoint(d, template)

        rows = {
            "write, pickle (before)": median_time(pickle_write, args.repeats),
            "write, msgpack verified (after)": median_time(new_write, args.repeats),
            "read, pickle (before)": median_time(pickle_read, args.repeats),
            "read, msgpack checked (after)": median_time(new_read, args.repeats),
        }
        size_old = (d / "checkpoint.pkl").stat().st_size
        size_new = (d / checkpoint.CHECKPOINT).stat().st_size
    print(machine_summary())
    print(
        f"heptamer run state, {args.seeds} seeds: pickle {size_old / 1e6:.1f} MB, msgpack {size_new / 1e6:.1f} MB"
    )
    for name, t in rows.items():
        print(f"{name:34s} {t * 1e3:8.1f} ms")
    print(
        f"ratio after/before: write {rows['write, msgpack verified (after)'] / rows['write, pickle (before)']:.2f}, "
        f"read {rows['read, msgpack checked (after)'] / rows['read, pickle (before)']:.2f}"
    )


if __name__ == "__main__":
    main()
