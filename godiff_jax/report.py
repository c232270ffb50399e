"""Search quality of a finished run directory: per-seed rows, the set's summary, and the
report `godiff report WORKDIR` writes (also `python -m godiff_jax.report WORKDIR`).

Everything is computed after the run from `structures.db` (every evaluated structure with
its evaluation index) and `metrics.jsonl` (timings, training health), so a run can be
scored again with another success test. The rows are what `benchmarks/quality.py` writes
to `benchmarks/results/NAME.json` (schema in benchmarks/results/README.md).

`write_report` puts into WORKDIR/report/: `best_energy.png`, `success_fraction.png`
(where a success test applies), `figure1_adatom.png` (the adatom with EMT), `summary.txt`
and `best_seed{N}.extxyz`, each seed's lowest-energy structure with its energy and forces.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import ase.db
import ase.io
import numpy as np
from ase.constraints import FixAtoms

from godiff_jax import io, plots
from godiff_jax.analysis import (
    ADATOM_EMT_MINIMUM,
    HEPTAMER_EMT_MINIMUM,
    stepped_pt_adatom_minimum_sites,
    success_fn,
)
from godiff_jax.ase_interop import from_atoms, to_atoms
from godiff_jax.system import System

# tests(positions [N, M, 3], energies [N]) -> {"strict": bool [N], "graph": bool [N] | None}
SuccessTests = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray | None]]


def read_evaluated(workdir: Path, system: System) -> dict[int, dict[str, np.ndarray]]:
    """Per seed: evaluation index [N], energy [N] (eV), mobile positions [N, M, 3], iteration
    [N], position in its batch [N] (-1 where not recorded) and database row id [N], sorted
    by evaluation index (structures with a finite energy only)."""
    out: dict[int, dict[str, list]] = {}
    with ase.db.connect(Path(workdir) / io.DATABASE) as db:
        for row in db.select():
            if not row.get("valid", True):
                continue  # failed, non-finite or below energy_floor: not a candidate
            d = out.setdefault(
                int(row.seed),
                {"evaluation": [], "energy": [], "x": [], "it": [], "id": [], "index": []},
            )
            d["id"].append(row.id)
            d["evaluation"].append(int(row.evaluation))
            d["energy"].append(float(row.energy))
            d["x"].append(np.asarray(row.positions)[system.n_template :])
            d["it"].append(int(row.iteration))
            d["index"].append(int(row.get("index", -1)))
    seeds = {}
    for seed, d in out.items():
        order = np.argsort(d["evaluation"], kind="stable")
        seeds[seed] = {
            "evaluation": np.asarray(d["evaluation"])[order],
            "energy": np.asarray(d["energy"])[order],
            "positions": np.asarray(d["x"])[order],
            "iteration": np.asarray(d["it"])[order],
            "id": np.asarray(d["id"])[order],
            "index": np.asarray(d["index"])[order],
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
    evaluated: dict | None = None,
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Per-seed rows, the evaluation grid and the per-seed best-above-minimum curves
    (`evaluated`: `read_evaluated`'s result, when the caller has read it already).

    Each row: seed, evaluations, first success (strict and graph-only: evaluation index and
    program seconds, None when never), best single point above `e_min`, and training health
    (skipped steps, the first iteration with non-finite parameters or samples, clipped share).
    """
    metrics = io.read_metrics(workdir)
    if evaluated is None:
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


def succeeded(row: dict, budget: int, test: str = "strict") -> bool:
    """Whether a seed row's first success by `test` came within `budget` evaluations."""
    e = row[f"first_success_{test}"]
    return e is not None and e <= budget


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
        hits = [r[f"first_success_{name}"] for r in rows if succeeded(r, budget, name)]
        secs = [
            r[f"seconds_to_success_{name}"] if succeeded(r, budget, name) else np.inf for r in rows
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


def paired_successes(rows_a: list[dict], rows_b: list[dict], budget: int, test: str = "strict"):
    """Two arms on the same seeds, outcome by outcome, with McNemar's exact test.

    Arms that share seeds draw the same prior and reverse noise, so their outcomes are
    paired: only the seeds where they disagree say which is better. Returns the counts
    (both, only a, only b, neither) and the two-sided exact p of the discordant seeds
    (binomial, one half each way).
    """
    seeds_a, seeds_b = [r["seed"] for r in rows_a], [r["seed"] for r in rows_b]
    if sorted(seeds_a) != sorted(seeds_b):
        raise ValueError(f"arms are not paired: seeds {seeds_a} against {seeds_b}")
    b_by_seed = {r["seed"]: succeeded(r, budget, test) for r in rows_b}
    pairs = [(succeeded(r, budget, test), b_by_seed[r["seed"]]) for r in rows_a]
    only_a = sum(a and not b for a, b in pairs)
    only_b = sum(b and not a for a, b in pairs)
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return {
        "both": sum(a and b for a, b in pairs),
        "only_a": only_a,
        "only_b": only_b,
        "neither": sum(not (a or b) for a, b in pairs),
        "p_two_sided": min(1.0, 2 * tail),
    }


# --------------------------------------------------------------------------------------
# The report of a run directory
# --------------------------------------------------------------------------------------

KNOWN_MINIMA = {"heptamer": HEPTAMER_EMT_MINIMUM, "adatom": ADATOM_EMT_MINIMUM}  # eV, EMT
STRICT_TESTS = {
    "heptamer": "the wheel bond graph, relaxing to within 0.05 eV of the minimum",
    "adatom": "within 0.3 Å of a minimum site, or a single point within 0.1 eV of the minimum",
}


def check_run(workdir: Path) -> None:
    """ValueError, naming the directory and what it lacks, unless it holds a run."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise ValueError(f"{workdir} is not a directory")
    missing = [name for name in (io.METRICS, io.DATABASE) if not (workdir / name).is_file()]
    if missing:
        raise ValueError(f"{workdir} holds no run: no {' and no '.join(missing)}")
    if not io.read_metrics(workdir):
        raise ValueError(f"{workdir} holds no run: {io.METRICS} has no rows")


def run_system(workdir: Path) -> tuple[System, str | None]:
    """The searched system, read off the first structure in structures.db.

    A built-in system ("heptamer", "adatom") when the structure's species, template and
    cell are that system's; otherwise a System of the structure (template: its fixed
    atoms) and None: enough to read and write the run's structures, not to search.
    """
    from godiff_jax.run_config import BUILTIN

    with ase.db.connect(Path(workdir) / io.DATABASE) as db:
        row = next(iter(db.select(limit=1)), None)
    if row is None:
        raise ValueError(f"{workdir} holds no run: {io.DATABASE} has no structures")
    atoms = row.toatoms()
    for name, make in BUILTIN.items():
        system = make()
        if np.allclose(atoms.cell.array, system.cell, atol=1e-6):
            try:
                from_atoms(system, atoms)
                return system, name
            except ValueError:
                pass
    fixed = [i for c in atoms.constraints if isinstance(c, FixAtoms) for i in c.index]
    n = len(fixed)  # to_atoms writes the template first, every template atom fixed
    pbc = tuple(bool(p) for p in atoms.pbc)
    return System(
        name=Path(workdir).name,
        mode="surface" if pbc[0] and pbc[1] else "cluster",
        template_positions=atoms.positions[:n],
        template_numbers=atoms.numbers[:n],
        mobile_numbers=atoms.numbers[n:],
        cell=atoms.cell.array,
        pbc=pbc,
        box_lo=np.zeros(3),
        box_hi=np.zeros(3),
    ), None


def energy_model(workdir: Path) -> str | None:
    """The [energy] model of a run made by `godiff run` (its run.json); None for a run
    made from Python or by the experiment scripts, which do not record it."""
    from godiff_jax.cli import RUN_RECORD

    path = Path(workdir) / RUN_RECORD
    if not path.exists():
        return None
    return json.loads(path.read_text())["config"].get("energy", {}).get("model", "emt")


def known_minimum(name: str | None, best_energy: float) -> float | None:
    """The EMT minimum of a built-in system, unless the run's energies go below it: then
    they are another energy model's (universal potentials and DFT codes give energies far
    below EMT's), and no minimum or success test of ours applies."""
    e_min = KNOWN_MINIMA.get(name)
    return e_min if e_min is not None and best_energy > e_min - 0.01 else None


def strict_tests(name: str | None, system: System) -> SuccessTests:
    """`seed_rows`' tests: the built-in system's strict test (`analysis.success_fn`, what
    the run itself applied), 256 structures at a time up to the first success (heptamer
    candidates are relaxed); no test (None) for any other system."""
    fn = success_fn(name, system) if name else None

    def tests(x, e):
        if fn is None:
            return {"strict": None, "graph": None}
        strict = np.zeros(len(x), bool)
        for start in range(0, len(x), 256):
            chunk = slice(start, start + 256)
            ok = np.asarray(fn(x[chunk], e[chunk], np.ones(len(x[chunk]), bool)))
            strict[chunk] = ok
            if ok.any():
                break
        return {"strict": strict, "graph": None}

    return tests


def adatom_landscape(
    system: System, nx: int = 24, ny: int = 16, energy_fn=None, height: float = 2.6
) -> dict:
    """The relaxed energy over the surface plane, for `plots.adatom_figure`.

    The adatom starts at each point of an nx x ny grid of fractional x/y over the cell
    (cell centres), `height` Å from the nearest slab atom (minimum image in x/y), and
    relaxes in z with x/y held at the grid point (FIRE to 0.01 eV/Å; `energy_fn` default
    the JAX EMT), so the map is the energy of each placement, not the basin it falls into.
    Returns {"frac" [nx, ny, 2], "cell" [2, 2] Å, "energy" [nx, ny] eV}.
    """
    import jax
    import jax.numpy as jnp

    from godiff_jax.potentials.emt import emt_energy_fn
    from godiff_jax.relax import relax_batch

    if energy_fn is None:
        energy_fn = emt_energy_fn(system)
    u, v = (np.arange(nx) + 0.5) / nx, (np.arange(ny) + 0.5) / ny
    frac = np.stack(np.meshgrid(u, v, indexing="ij"), axis=-1)  # [nx, ny, 2]
    cell = np.asarray(system.cell[:2, :2], float)
    xy = frac.reshape(-1, 2) @ cell
    images = np.array([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)]) @ cell
    slab = np.asarray(system.template_positions, float)
    d = np.linalg.norm(
        xy[:, None, None] - (slab[None, None, :, :2] + images[None, :, None]), axis=-1
    )
    d = d.min(axis=1)  # [G, n_template], minimum image in x/y
    z = np.max(slab[None, :, 2] + np.sqrt(np.maximum(0.0, height**2 - d**2)), axis=1)
    starts = np.concatenate([xy, z[:, None]], axis=1)[:, None, :]  # [G, 1, 3]

    def z_only(x):  # x/y forces vanish: FIRE moves the adatom along z only
        return energy_fn(jnp.concatenate([jax.lax.stop_gradient(x[:, :2]), x[:, 2:]], axis=1))

    res = relax_batch(z_only, jnp.asarray(starts), fmax=0.01, confine=system.confine)
    return {"frac": frac, "cell": cell, "energy": np.asarray(res.energy).reshape(nx, ny)}


def seed_samples(workdir: Path, system: System, seed: int, evaluated: dict | None = None):
    """One seed's evaluated structures for `plots.adatom_figure`: x/y of every mobile atom
    [N * M, 2] Å, and per point its iteration's kT (eV, from the metrics), iteration and
    the structure's energy (eV)."""
    d = (evaluated or read_evaluated(workdir, system)).get(seed)
    if d is None:
        raise ValueError(f"{workdir}: seed {seed} has no evaluated structure")
    kT = {r["iteration"]: r["kT"] for r in io.read_metrics(workdir) if r["seed"] == seed}
    m = system.n_mobile
    return {
        "xy": d["positions"][:, :, :2].reshape(-1, 2),
        "kT": np.repeat([kT[int(i)] for i in d["iteration"]], m),
        "iteration": np.repeat(d["iteration"], m),
        "energy": np.repeat(d["energy"], m),
    }


def adatom_run_figure(
    workdir: Path,
    system: System,
    seed: int,
    path: Path,
    e_min: float = ADATOM_EMT_MINIMUM,
    grid: tuple[int, int] = (24, 16),
    evaluated: dict | None = None,
) -> Path:
    """Figure 1 of one seed of an adatom run (`stepped_pt_adatom()`, EMT)."""
    metrics = [r for r in io.read_metrics(workdir) if r["seed"] == seed]
    return plots.adatom_figure(
        adatom_landscape(system, *grid),
        seed_samples(workdir, system, seed, evaluated),
        metrics,
        path,
        e_min,
        sites=stepped_pt_adatom_minimum_sites(),
        title=f"Pt adatom on stepped Pt(111), EMT: {Path(workdir).name}, seed {seed}",
    )


def write_best_structure(workdir: Path, system: System, d: dict, seed: int, path: Path):
    """The seed's lowest-energy structure (`read_evaluated`'s `d`) as an extxyz file:
    template and mobile atoms, its energy and forces, seed/evaluation/iteration in info."""
    i = int(np.argmin(d["energy"]))
    with ase.db.connect(Path(workdir) / io.DATABASE) as db:
        row = db.get(id=int(d["id"][i]))
    atoms = to_atoms(
        system,
        d["positions"][i],
        energy=float(d["energy"][i]),
        forces=row.get("forces"),
        info={
            "seed": seed,
            "evaluation": int(d["evaluation"][i]),
            "iteration": int(d["iteration"][i]),
        },
    )
    ase.io.write(path, atoms, format="extxyz")
    return path


def write_report(
    workdir: Path, out: Path | None = None, grid: tuple[int, int] = (24, 16)
) -> tuple[str, list[Path]]:
    """Write the report of a run directory into `out` (default WORKDIR/report); returns
    the summary's text and the files written. `grid`: Figure 1's landscape grid."""
    workdir = Path(workdir)
    check_run(workdir)
    out = Path(out) if out is not None else workdir / "report"
    out.mkdir(parents=True, exist_ok=True)
    system, name = run_system(workdir)
    evaluated = read_evaluated(workdir, system)
    metrics = io.read_metrics(workdir)
    seeds = sorted({r["seed"] for r in metrics})
    found = {s: d for s, d in evaluated.items() if d["energy"].size}
    best_energy = min((float(d["energy"].min()) for d in found.values()), default=np.inf)
    model = energy_model(workdir)
    e_min = known_minimum(name, best_energy)
    tested = e_min is not None  # the built-in systems with a minimum have a strict test
    budget = max(r["evaluations"] for r in metrics)
    rows, grid_e, curves = seed_rows(
        workdir,
        system,
        strict_tests(name if tested else None, system),
        0.0 if e_min is None else e_min,
        budget,
        grid_step=max(1, budget // 160),
        evaluated=evaluated,
    )
    arm = {
        "curve_evaluations": grid_e,
        "curves": curves,
        "rows": rows,
        "budget": budget,
        "successes": None,
        "first_success": None,
    }
    if tested:
        hits = [r["first_success_strict"] for r in rows]
        arm["successes"] = f"{sum(h is not None for h in hits)}/{len(rows)}"
        arm["first_success"] = hits
    label = f"{name or system.name} ({system.formula})"
    files = [
        plots.best_energy_figure(
            {workdir.name: arm},
            out / "best_energy.png",
            title=f"{label}: best energy against evaluations",
            above_minimum=e_min is not None,
        )
    ]
    if tested:
        files.append(
            plots.success_fraction_figure(
                {workdir.name: arm},
                out / "success_fraction.png",
                title=f"{label}: seeds succeeded against evaluations",
            )
        )
    if name == "adatom" and e_min is not None and seeds[0] in found:
        files.append(
            adatom_run_figure(
                workdir, system, seeds[0], out / "figure1_adatom.png", e_min, grid, evaluated
            )
        )
    for s, d in found.items():
        files.append(write_best_structure(workdir, system, d, s, out / f"best_seed{s}.extxyz"))
    text = _summary_text(workdir, system, name, model, e_min, rows, found, tested)
    (out / "summary.txt").write_text(text)
    files.append(out / "summary.txt")
    return text, files


def _column(value, width: int, spec: str = "") -> str:
    return f"{'-' if value is None else format(value, spec):>{width}}"


def _summary_text(workdir, system, name, model, e_min, rows, found, tested) -> str:
    lines = [
        f"run: {workdir}",
        f"system: {name or 'not a built-in system'}, {system.formula} on "
        f"{system.n_template} template atoms",
        f"energy model: {model or 'not recorded (no run.json)'}",
        f"minimum: {e_min} eV (EMT)" if e_min is not None else "minimum: not known",
        f"success test: {STRICT_TESTS[name]}" if tested else "success test: none applies",
        "seed  evaluations  iterations  best_energy_eV  above_minimum_eV  first_success",
    ]
    for r in rows:
        d = found.get(r["seed"])
        best = None if d is None else float(d["energy"].min())
        above = None if e_min is None else r["best_energy_above_min"]
        lines.append(
            f"{r['seed']:4d}  {r['evaluations']:11d}  {r['iterations']:10d}  "
            f"{_column(best, 14, '.6f')}  {_column(above, 16, '.6f')}  "
            f"{_column(r['first_success_strict'] if tested else None, 13)}"
        )
    if found:
        s, d = min(found.items(), key=lambda kv: kv[1]["energy"].min())
        i = int(np.argmin(d["energy"]))
        lines.append(
            f"overall best: {d['energy'][i]:.6f} eV, seed {s}, evaluation "
            f"{int(d['evaluation'][i])}, iteration {int(d['iteration'][i])} (best_seed{s}.extxyz)"
        )
    if tested:
        n = sum(r["first_success_strict"] is not None for r in rows)
        lines.append(f"successes: {n}/{len(rows)} seeds")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from godiff_jax.cli import main

    main(["report", *sys.argv[1:]])
