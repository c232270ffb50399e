"""Convert a run directory's pickle checkpoint (godiff_jax before format 1) to the array format.

    python -m godiff_jax.legacy RUN_DIR --trust-pickle

This is the one place in the package that unpickles a file, and only on the user's
explicit word: unpickling runs whatever code the file's author put in it.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

from godiff_jax import checkpoint


def convert(workdir: Path) -> Path:
    """Write checkpoint.msgpack from checkpoint.pkl (which is left in place)."""
    workdir = Path(workdir)
    with open(workdir / checkpoint.LEGACY_CHECKPOINT, "rb") as f:
        saved = pickle.load(f)  # the caller has said they trust this file
    seeds = [int(s) for s in saved["seeds"]]
    state = saved["state"]
    if np.ndim(state.kT) == 0:  # written before RunState had kT: one NaN per seed
        state = state._replace(kT=np.full(len(seeds), np.nan, np.float32))
    meta = {"seeds": seeds, "iteration": int(saved["iteration"])}
    checkpoint.save_checkpoint(workdir, state, meta)
    return workdir / checkpoint.CHECKPOINT


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", type=Path)
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="required: you trust the author of checkpoint.pkl (loading it runs their code)",
    )
    args = p.parse_args(argv)
    if not args.trust_pickle:
        raise SystemExit(
            "refusing to unpickle without --trust-pickle: a pickle file can run arbitrary code"
        )
    print(f"wrote {convert(args.workdir)}")


if __name__ == "__main__":
    main()
