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


def _atomic_write(path: Path, data: bytes) -> None:
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


def write_config(workdir: Path, config: Any) -> None:
    """Store the config; an existing run directory must have been made with the same one
    (an older directory's flat config.json is read through the flat aliases)."""
    from godiff_jax.config import from_dict

    path = Path(workdir) / CONFIG
    new = config.to_dict()
    if path.exists():
        old = _flat(from_dict(json.loads(path.read_text())).to_dict())
        diff = {k: (old.get(k), v) for k, v in _flat(new).items() if old.get(k) != v}
        if diff:
            raise ValueError(
                f"{workdir} holds a run with a different config {diff} (old, new); "
                "use a new --workdir or the same settings to resume"
            )
        return
    _atomic_write(path, json.dumps(new, indent=2).encode())


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
    """Drop database rows and metrics of iterations >= `iteration` (an interrupted one)."""
    workdir = Path(workdir)
    if (workdir / DATABASE).exists():
        with ase.db.connect(workdir / DATABASE) as db:
            ids = [row.id for row in db.select(f"iteration>={iteration}")]
            if ids:
                db.delete(ids)
    rows = [r for r in read_metrics(workdir) if r["iteration"] < iteration]
    _atomic_write(workdir / METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())


def write_structures(
    workdir: Path,
    system: System,
    positions: np.ndarray,
    energies: np.ndarray,
    forces: np.ndarray,
    keys: list[dict],
) -> None:
    """Add evaluated structures to the ASE database (`ase db structures.db` lists them)."""
    with ase.db.connect(Path(workdir) / DATABASE) as db:
        for x, e, f, kv in zip(positions, energies, forces, keys, strict=True):
            atoms = to_atoms(system, np.asarray(x, float), energy=float(e), forces=np.asarray(f))
            db.write(atoms, **kv)
