"""Search quality of a finished run directory: per-seed rows and the set's summary.

Everything is computed after the run from `structures.db` (every evaluated structure with
its evaluation index) and `metrics.jsonl` (timings, training health), so a run can be
scored again with another success test. The rows are what `benchmarks/quality.py` writes
to `benchmarks/results/NAME.json` (schema in benchmarks/results/README.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import ase.db
import numpy as np

from godiff_jax import io
from godiff_jax.system import System

# tests(positions [N, M, 3], energies [N]) -> {"strict": bool [N], "graph": bool [N] | None}
SuccessTests = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray | None]]


def read_evaluated(workdir: Path, system: System) -> dict[int, dict[str, np.ndarray]]:
    """Per seed: evaluation index [N], energy [N] (eV), mobile positions [N, M, 3], iteration
    [N], sorted by evaluation index (structures with a finite energy only)."""
    out: dict[int, dict[str, list]] = {}
    with ase.db.connect(Path(workdir) / io.DATABASE) as db:
        for row in db.select():
            if not row.get("valid", True):
                continue  # failed, non-finite or below energy_floor: not a candidate
            d = out.setdefault(int(row.seed), {"evaluation": [], "energy": [], "x": [], "it": []})
            d["evaluation"].append(int(row.evaluation))
            d["energy"].append(float(row.energy))
            d["x"].append(np.asarray(row.positions)[system.n_template :])
            d["it"].append(int(row.iteration))
    seeds = {}
    for seed, d in out.items():
        order = np.argsort(d["evaluation"], kind="stable")
        seeds[seed] = {
            "evaluation": np.asarray(d["evaluation"])[order],
            "energy": np.asarray(d["energy"])[order],
            "positions": np.asarray(d["x"])[order],
            "iteration": np.asarray(d["it"])[order],
        }
    return seeds


def _found_seconds(rows: list[dict], iteration: int) -> float:
    """Program-clock seconds at which iteration's structures had been generated and
    evaluated (before that iteration's training), as `search.run` records them."""
    r = next(r for r in rows if r["iteration"] == iteration)
    return float(r["seconds_total"] - r["seconds_training"])


def best_curve(evaluation: np.ndarray, energy: np.ndarray, grid: np.ndarray, e_min: float):
    """Lowest single point above `e_min` (eV) among the first g evaluations, for g in grid."""
    best = np.minimum.accumulate(energy) - e_min if energy.size else np.zeros(0)
    pos = np.searchsorted(evaluation, grid, side="right") - 1
    return np.where(pos >= 0, best[np.clip(pos, 0, None)] if best.size else np.nan, np.nan)


def seed_rows(
    workdir: Path,
    system: System,
    tests: SuccessTests,
    e_min: float,
    budget: int,
    grid_step: int = 16,
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Per-seed rows, the evaluation grid and the per-seed best-above-minimum curves.

    Each row: seed, evaluations, first success (strict and graph-only: evaluation index and
    program seconds, None when never), best single point above `e_min`, and training health
    (skipped steps, the first iteration with non-finite parameters or samples, clipped share).
    """
    metrics = io.read_metrics(workdir)
    evaluated = read_evaluated(workdir, system)
    grid = np.arange(grid_step, budget + 1, grid_step)
    rows, curves = [], []
    for seed in sorted({r["seed"] for r in metrics}):
        m = sorted((r for r in metrics if r["seed"] == seed), key=lambda r: r["iteration"])
        d = evaluated.get(seed)
        row: dict = {"seed": seed, "evaluations": m[-1]["evaluations"], "iterations": len(m)}
        if d is None or not d["energy"].size:
            ok = {"strict": None, "graph": None}
            row["best_energy_above_min"] = None
            curves.append(np.full(grid.shape, np.nan))
        else:
            ok = tests(d["positions"], d["energy"])
            row["best_energy_above_min"] = float(d["energy"].min() - e_min)
            curves.append(best_curve(d["evaluation"], d["energy"], grid, e_min))
        for name in ("strict", "graph"):
            hit = None if ok.get(name) is None else np.flatnonzero(ok[name])
            if hit is None:
                row[f"first_success_{name}"] = row[f"seconds_to_success_{name}"] = None
            elif hit.size:
                i = hit[0]
                row[f"first_success_{name}"] = int(d["evaluation"][i])
                row[f"seconds_to_success_{name}"] = _found_seconds(m, int(d["iteration"][i]))
            else:
                row[f"first_success_{name}"] = row[f"seconds_to_success_{name}"] = None
        row["first_success_online"] = m[-1].get("first_success_evaluation")
        row["n_skipped_steps"] = int(sum(r.get("n_skipped_steps", 0) for r in m))
        row["loss_all_finite"] = (
            all(r.get("loss_mean") is not None and np.isfinite(r["loss_mean"]) for r in m)
            and row["n_skipped_steps"] == 0
        )
        bad = [r["iteration"] for r in m if r.get("params_finite") is False]
        row["nonfinite_params_from_iteration"] = bad[0] if bad else None
        bad = [r["iteration"] for r in m if r.get("n_nonfinite_samples", 0) > 0]
        row["nonfinite_samples_from_iteration"] = bad[0] if bad else None
        clipped = [r["clipped_fraction"] for r in m if r.get("clipped_fraction") is not None]
        row["clipped_fraction_mean"] = float(np.mean(clipped)) if clipped else None
        row["best_energy_by_iteration"] = [r["best_energy"] - e_min for r in m]
        rows.append(row)
    return rows, grid, np.asarray(curves)


def summarise(
    rows: list[dict],
    budget: int,
    grid: np.ndarray,
    curves: np.ndarray,
    tests: tuple[str, ...] = ("strict", "graph"),
) -> dict:
    """The set: successes within `budget`, mean/median evaluation and seconds at success
    (median seconds counts a seed that never succeeds as infinite), mean best energy.
    Success tests not in `tests` (the adatom has no bond graph) are reported as None."""
    out: dict = {"n_seeds": len(rows), "budget": budget}
    for name in ("strict", "graph"):
        if name not in tests:
            for key in ("successes", "mean_evaluation_at_success", "median_evaluation_at_success"):
                out[f"{key}_{name}"] = None
            out[f"median_seconds_to_success_{name}"] = None
            continue
        evals = [r[f"first_success_{name}"] for r in rows]
        hits = [e for e in evals if e is not None and e <= budget]
        secs = [
            r[f"seconds_to_success_{name}"]
            if r[f"first_success_{name}"] is not None and r[f"first_success_{name}"] <= budget
            else np.inf
            for r in rows
        ]
        out[f"successes_{name}"] = len(hits)
        out[f"mean_evaluation_at_success_{name}"] = float(np.mean(hits)) if hits else None
        out[f"median_evaluation_at_success_{name}"] = float(np.median(hits)) if hits else None
        med = float(np.median(secs)) if secs else None
        out[f"median_seconds_to_success_{name}"] = (
            med if med is not None and np.isfinite(med) else None
        )
    best = [r["best_energy_above_min"] for r in rows if r["best_energy_above_min"] is not None]
    out["mean_best_energy_above_min"] = float(np.mean(best)) if best else None
    out["all_losses_finite"] = all(r["loss_all_finite"] for r in rows)
    out["curve_evaluations"] = grid.tolist()
    out["curve_mean_best_above_min"] = np.nanmean(curves, axis=0).tolist() if len(curves) else []
    return out
