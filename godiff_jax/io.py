"""Run outputs: the config, the ASE database of evaluated structures, metrics (checkpoints:
`godiff_jax.checkpoint`)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import ase.db
import numpy as np

from godiff_jax.ase_interop import to_atoms
from godiff_jax.system import System

CONFIG = "config.json"
DATABASE = "structures.db"
METRICS = "metrics.jsonl"


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_diff(old: Any, new: Any) -> dict[str, tuple]:
    """{dotted name: (old, new)} of the fields where two SearchConfigs differ."""
    a, b = _flat(old.to_dict()), _flat(new.to_dict())
    return {k: (a.get(k), v) for k, v in b.items() if a.get(k) != v}


# Settings of earlier defaults (value, as written on the command line), for the hint that
# resumes such a run: refinement came on 2026-12-07, then 250 training steps at 2e-4.
_OLD_DEFAULT = {
    "sampler.refine_fraction": (0.0, "0"),
    "training.train_steps": (500, "500"),
    "training.learning_rate": (1e-4, "1e-4"),
}


def write_config(workdir: Path, config: Any) -> None:
    """Store the config; an existing run directory must have been made with the same one
    (an older directory's flat config.json is read through the flat aliases)."""
    from godiff_jax.config import from_dict

    path = Path(workdir) / CONFIG
    if path.exists():
        diff = config_diff(from_dict(json.loads(path.read_text())), config)
        if diff:
            # runs started before the default changed: at the paper's settings (before
            # 2026-12-04), at an earlier default (without refinement, 500 training steps at
            # 1e-4; before 2026-12-07)
            names = {k.rpartition(".")[2] for k in diff}
            hint = ""
            if {"train_steps", "n_reverse_steps", "train_stop"} <= names:
                hint = " (this run has the paper's settings: resume it with --preset paper, or `godiff resume`)"
            elif all(_OLD_DEFAULT.get(k, (None,))[0] == old for k, (old, _) in diff.items()):
                sets = " ".join(f"--set {k.rpartition('.')[2]}={_OLD_DEFAULT[k][1]}" for k in diff)
                hint = (
                    f" (this run has an earlier default: resume it with {sets}, or `godiff resume`)"
                )
            raise ValueError(
                f"{workdir} holds a run with a different config {diff} (old, new); "
                f"use a new --workdir or the same settings to resume{hint}"
            )
        return
    atomic_write(path, json.dumps(config.to_dict(), indent=2).encode())


def append_metrics(workdir: Path, rows: list[dict]) -> None:
    with open(Path(workdir) / METRICS, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_metrics(workdir: Path) -> list[dict]:
    path = Path(workdir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_outputs(workdir: Path, iteration: int) -> None:
    """The resume rule: metrics of iterations >= `iteration` (the interrupted one) are
    dropped; database rows of later iterations too, but the interrupted iteration's rows
    stay: they are evaluations already paid for, which `read_evaluations` hands back to the
    evaluator and the iteration's end rewrites complete."""
    workdir = Path(workdir)
    if (workdir / DATABASE).exists():
        with ase.db.connect(workdir / DATABASE) as db:
            ids = [row.id for row in db.select(f"iteration>{iteration}")]
            if ids:
                db.delete(ids)
    rows = [r for r in read_metrics(workdir) if r["iteration"] < iteration]
    atomic_write(workdir / METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())


def _atoms(system: System, x, energy, forces):
    if energy is None or not np.isfinite(energy):  # a failed evaluation: positions only
        return to_atoms(system, np.asarray(x, float))
    return to_atoms(system, np.asarray(x, float), energy=float(energy), forces=np.asarray(forces))


def write_evaluation(workdir: Path, system: System, x, energy, forces, keys: dict) -> None:
    """One evaluated structure, committed at once (a kill after this loses nothing)."""
    with ase.db.connect(Path(workdir) / DATABASE) as db:
        db.write(_atoms(system, x, energy, forces), **keys)


def read_evaluations(workdir: Path, system: System, iteration: int) -> dict[int, dict[int, tuple]]:
    """{seed: {index in the batch: (energy, mobile forces, reason)}} of the evaluations an
    iteration already has in the database (to resume it without recomputing them): a row
    with an energy gives (energy, forces, None), a failed one (NaN, zeros, its reason)."""
    path = Path(workdir) / DATABASE
    out: dict[int, dict[int, tuple]] = {}
    if not path.exists():
        return out
    with ase.db.connect(path) as db:
        for row in db.select(iteration=iteration):
            if "index" not in row.key_value_pairs:
                continue  # written by an older version: no batch position
            if "energy" in row:
                item = (float(row.energy), np.asarray(row.forces)[system.n_template :], None)
            else:
                reason = row.key_value_pairs.get("reason", "failed")
                item = (np.nan, np.zeros((system.n_mobile, 3)), reason)
            out.setdefault(int(row.seed), {})[int(row.index)] = item
    return out


def replace_iteration(
    workdir: Path, system: System, iteration: int, seeds: list[int], structures: list[tuple]
) -> None:
    """The iteration's rows of these seeds, rewritten complete in one transaction:
    structures are (positions, energy or NaN, forces, keys)."""
    with ase.db.connect(Path(workdir) / DATABASE) as db:
        ids = [r.id for r in db.select(iteration=iteration) if r.seed in seeds]
        if ids:
            db.delete(ids)
        for x, e, f, kv in structures:
            db.write(_atoms(system, x, e, f), **kv)
