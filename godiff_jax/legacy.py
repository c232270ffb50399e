"""Convert a run directory's pickle checkpoint (godiff_jax before format 1) to the array format.

    python -m godiff_jax.legacy RUN_DIR --trust-pickle

This is the one place in the package that unpickles a file, and only on the user's
explicit word: unpickling runs whatever code the file's author put in it.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from godiff_jax import checkpoint
from godiff_jax.records import RunClock
from godiff_jax.search import RunState


class LegacyRunState(NamedTuple):
    """The RunState the pickle checkpoints hold (the wall clock was part of it then)."""

    key: Any
    iteration: Any
    train: Any
    archive: Any
    n_evaluations: Any
    first_success: Any
    first_success_s: Any
    elapsed_s: Any
    kT: Any = float("nan")  # absent in the oldest ones


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("godiff_jax.search", "RunState"):
            return LegacyRunState
        return super().find_class(module, name)


def convert(workdir: Path) -> Path:
    """Write checkpoint.msgpack from checkpoint.pkl (which is left in place)."""
    workdir = Path(workdir)
    with open(workdir / checkpoint.LEGACY_CHECKPOINT, "rb") as f:
        saved = _Unpickler(f).load()  # the caller has said they trust this file
    seeds = [int(s) for s in saved["seeds"]]
    old = saved["state"]
    kT = old.kT
    if np.ndim(kT) == 0:  # written before RunState had kT: one NaN per seed
        kT = np.full(len(seeds), np.nan, np.float32)
    state = RunState(
        key=old.key,
        iteration=old.iteration,
        train=old.train,
        archive=old.archive,
        n_evaluations=old.n_evaluations,
        first_success=old.first_success,
        kT=kT,
    )
    clock = RunClock(np.asarray(old.elapsed_s, float), np.asarray(old.first_success_s, float))
    meta = {"seeds": seeds, "iteration": int(saved["iteration"]), "clock": clock.to_meta()}
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
