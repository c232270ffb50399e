"""Fingerprint of tiny runs, to show that a refactor keeps the numbers.

    python benchmarks/refactor_digest.py OUT.npz            # run and save the arrays
    python benchmarks/refactor_digest.py OUT.npz --vs A.npz # ... and compare with A

Runs three tiny searches (heptamer with JAX EMT over 2 seeds, the stepped adatom with
JAX EMT and an energy floor that rejects some structures, a gas-phase Pt4 cluster with
LJ) and stores every archive array, every parameter leaf, the database's energies and
the metrics without wall-clock fields. With --vs it prints, per array, whether the two
are bitwise equal and otherwise the largest absolute difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import ase.db
import jax
import numpy as np

from godiff_jax import pt111_heptamer, stepped_pt_adatom
from godiff_jax.io import read_metrics
from godiff_jax.potentials.emt import emt_energy_fn
from godiff_jax.potentials.lj import lj_energy_fn
from godiff_jax.system import make_cluster_system

try:  # the package after the reshape (issue 9): nested config, runner, evaluators
    from godiff_jax.config import make_config
    from godiff_jax.runner import run
except ImportError:  # before it, for the "before" fingerprint
    from godiff_jax.search import SearchConfig as make_config
    from godiff_jax.search import run


def _replace(config, **names):
    if hasattr(config, "replace"):
        return config.replace(**names)
    return dataclasses.replace(config, **names)


TINY = make_config(
    n_iterations=2,
    n_samples=6,
    buffer_size=6,
    batch_size=3,
    train_steps=4,
    kT_start=1.0,
    kT_end=0.1,
    n_reverse_steps=4,
    features=8,
    n_blocks=1,
    n_rbf=6,
    cutoff=5.0,
)


def _run(system, config, energy, seeds, workdir):
    try:  # the evaluator protocol, if the package has it
        from godiff_jax.evaluate import JaxEvaluator

        kwargs = {"evaluator": JaxEvaluator(energy)}
    except ImportError:
        kwargs = {"energy_fn": energy}
    return run(system, config, workdir, seeds=seeds, progress=False, **kwargs)


def digest(root: Path) -> dict[str, np.ndarray]:
    out = {}
    adatom = stepped_pt_adatom()
    cases = {
        "heptamer": (pt111_heptamer(), TINY, emt_energy_fn(pt111_heptamer()), [0, 1]),
        # A floor near the adatom's energies, so the archive rejects part of each batch.
        "adatom": (adatom, _replace(TINY, energy_floor=-1e9), emt_energy_fn(adatom), [3]),
        "cluster": (
            make_cluster_system("Pt4", 6.0, vacuum=4.0),
            _replace(TINY, min_distance=0.5),
            None,
            [5],
        ),
    }
    for name, (system, config, energy, seeds) in cases.items():
        if energy is None:
            energy = lj_energy_fn(system, epsilon=0.5, sigma=2.4)
        if name == "adatom":
            probe = _run(system, config, energy, seeds, root / "probe")
            e = np.asarray(probe.archive.energies)[np.asarray(probe.archive.valid)]
            config = _replace(config, energy_floor=float(np.median(e)))
        state = _run(system, config, energy, seeds, root / name)
        for field in state.archive._fields:
            out[f"{name}/archive/{field}"] = np.asarray(getattr(state.archive, field))
        leaves = jax.tree_util.tree_leaves_with_path(state.train.params)
        for path, leaf in leaves:
            out[f"{name}/params/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
        out[f"{name}/key"] = np.asarray(jax.random.key_data(state.key))
        out[f"{name}/n_evaluations"] = np.asarray(state.n_evaluations)
        with ase.db.connect(root / name / "structures.db") as db:
            rows = [r for r in db.select() if r.get("valid", True)]
        out[f"{name}/db/energy"] = np.array([r.energy for r in rows])
        out[f"{name}/db/weight"] = np.array([r.weight for r in rows])
        for r in read_metrics(root / name):
            for k, v in r.items():
                if k.startswith("seconds") or k.endswith("seconds") or v is None:
                    continue
                if isinstance(v, int | float | bool):
                    key = f"{name}/metrics/{r['seed']}/{r['iteration']}/{k}"
                    out[key] = np.asarray(v)
    return out


def compare(new: dict, old: dict) -> bool:
    same = True
    for k in sorted(set(new) | set(old)):
        if k not in new or k not in old:
            print(f"{k}: only in {'new' if k in new else 'old'}")
            same = False
            continue
        a, b = new[k], old[k]
        if a.shape != b.shape:
            print(f"{k}: shape {a.shape} vs {b.shape}")
            same = False
        elif not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
            diff = np.nanmax(np.abs(a.astype(float) - b.astype(float)))
            print(f"{k}: differs, max |diff| {diff:.3g}")
            same = False
    print("bitwise identical" if same else "DIFFERENT")
    return same


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--vs", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = digest(Path(tmp))
    np.savez(args.out, **out)
    print(f"{len(out)} arrays -> {args.out}")
    if args.vs:
        old = dict(np.load(args.vs))
        raise SystemExit(0 if compare(out, old) else 1)


if __name__ == "__main__":
    main()
