"""Search quality over many seeds as one program: per-seed rows, the set's summary, a figure.

    python benchmarks/quality.py adatom --seeds 8 --name cpu_adatom8_default
    python benchmarks/quality.py heptamer --seeds 8 --preset paper --name cpu_heptamer8_paper
    python benchmarks/quality.py heptamer --seeds 8 --preset reference --name gpu_heptamer8_ref
    python benchmarks/quality.py adatom --seeds 8 --set score_convention=textbook --name X
    python benchmarks/quality.py adatom --name X --score-only     # rescore runs/quality/X

Runs the system's default settings (experiments/SYSTEM.py `DEFAULT`; `--preset paper`: its
`PAPER`; runs before 2026-12-04 started from `PAPER` without the preset) with the presets and
overrides, then scores the run directory after the fact (godiff_jax.report) and writes
benchmarks/results/NAME.json and NAME.png (schema: benchmarks/results/README.md).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from godiff_jax import pt111_heptamer, stepped_pt_adatom
from godiff_jax.analysis import (
    ADATOM_EMT_MINIMUM,
    HEPTAMER_EMT_MINIMUM,
    adatom_success,
    heptamer_success_batch,
)
from godiff_jax.cli import apply_overrides, split_and_report
from godiff_jax.config import PRESET_NAMES, with_presets
from godiff_jax.evaluate import JaxEvaluator
from godiff_jax.plots import best_energy_figure
from godiff_jax.potentials.emt import emt_energy_fn
from godiff_jax.report import seed_rows, summarise
from godiff_jax.runner import run
from godiff_jax.runtime import keep_heap_memory, machine_summary, use_compilation_cache
from godiff_jax.search import GODiff
from godiff_jax.transfer import load_pretrained, params_template

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def experiment_settings(name: str):
    """(default, paper, make_success) of experiments/NAME.py."""
    spec = importlib.util.spec_from_file_location(
        f"exp_{name}", ROOT / "experiments" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DEFAULT, module.PAPER, module.make_success


def heptamer_tests(system):
    """strict: wheel graph and relaxes within 0.05 eV of the minimum; graph: wheel only.
    Relaxes only the wheel structures, and stops at the first strict success."""
    energy = emt_energy_fn(system)

    def tests(x, e):
        strict = np.zeros(len(x), bool)
        graph = np.zeros(len(x), bool)
        for start in range(0, len(x), 256):
            ok, info = heptamer_success_batch(system, jnp.asarray(x[start : start + 256]), energy)
            strict[start : start + len(ok)] = ok
            graph[start : start + len(ok)] = info["wheel"]
            if ok.any():
                break
        return {"strict": strict, "graph": graph}

    return tests, HEPTAMER_EMT_MINIMUM, ("strict", "graph")


def adatom_tests(system):
    """strict: the experiment's test (minimum site within 0.3 Å or single point within
    0.1 eV); there is no bond graph to test."""

    def tests(x, e):
        return {"strict": np.asarray(adatom_success(system, x, e)), "graph": None}

    return tests, ADATOM_EMT_MINIMUM, ("strict",)


SYSTEMS = {
    "heptamer": (pt111_heptamer, heptamer_tests),
    "adatom": (stepped_pt_adatom, adatom_tests),
}


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("system", choices=sorted(SYSTEMS))
    p.add_argument("--name", required=True, help="results file stem (benchmarks/results/NAME)")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--preset", choices=PRESET_NAMES, action="append", default=None)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--workdir", default=None, help="default runs/quality/NAME (resumes)")
    p.add_argument("--seed-batch", type=int, default=None)
    p.add_argument("--score-only", action="store_true", help="score an existing run directory")
    p.add_argument("--out", default=str(RESULTS), help="folder for NAME.json and NAME.png")
    p.add_argument(
        "--init-params",
        default=None,
        metavar="SOURCE",
        help="start from a trained model (transfer): a run directory, file or shipped name",
    )
    p.add_argument(
        "--cpu-devices",
        default=None,
        metavar="N",
        help="CPU devices for the seeds: a number or 'auto' (default auto; RESULTS.md sections 70, 73)",
    )
    args = p.parse_args(argv)

    keep_heap_memory()
    # As the experiments and `godiff run`: compiled programs come from the disk cache when
    # the same settings ran before (GODIFF_JAX_CACHE=off: compile afresh).
    cache = use_compilation_cache()
    cpu_devices = split_and_report(args.seeds, args.cpu_devices, args.seed_batch)
    make_system, make_tests = SYSTEMS[args.system]
    system = make_system()
    default, paper, make_success = experiment_settings(args.system)
    config = apply_overrides(with_presets(default, paper, args.preset), args.set)
    seeds = list(range(args.seed, args.seed + args.seeds))
    workdir = Path(args.workdir or ROOT / "runs" / "quality" / args.name)
    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))

    wall = None
    start = {}
    if args.init_params is not None:
        score, _ = params_template(GODiff(system, config))
        start["init_params"] = load_pretrained(args.init_params, score).params
    if not args.score_only:
        t0 = time.perf_counter()
        run(
            system,
            config,
            workdir,
            evaluator=JaxEvaluator(emt_energy_fn(system)),
            seeds=seeds,
            success_fn=make_success(system),
            progress=False,
            seed_batch=args.seed_batch,
            **start,
        )
        wall = time.perf_counter() - t0

    tests, e_min, available = make_tests(system)
    budget = config.evaluation_budget
    rows, grid, curves = seed_rows(workdir, system, tests, e_min, budget)
    summary = summarise(rows, budget, grid, curves, available)
    summary["wall_seconds_program"] = wall
    result = {
        **result_header(args.name, args.system, "quality.py", argv, commit, dirty),
        "preset": args.preset,
        "overrides": args.set,
        "init_params": args.init_params,
        "cpu_devices": cpu_devices,
        "compilation_cache": None if cache is None else str(cache),
        "settings": config.to_dict(),
        "seeds": seeds,
        "e_min": e_min,
        "summary": summary,
        "rows": rows,
    }
    write_result(result, Path(args.out), grid, curves, f"{args.system}: {args.name}")


def result_header(name, system, script, argv, commit, dirty) -> dict:
    """The fields every result file starts with: what ran, where, when, from which code."""
    return {
        "name": name,
        "system": system,
        "command": " ".join(["python", f"benchmarks/{script}", *(argv or sys.argv[1:])]),
        "commit": commit,
        "dirty": dirty,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_summary(),
    }


def write_result(result: dict, out: Path, grid, curves, title: str) -> None:
    """NAME.json (with the per-seed curves) and NAME.png in `out`; prints the table."""
    result = dict(result, curves=np.where(np.isfinite(curves), curves, -1.0).tolist())  # -1: none
    name = result["name"]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # e.g. a bare GPU machine: the JSON is the result, the PNG can follow
        print("matplotlib not installed: no figure (benchmarks/quality_table.py draws it later)")
        print_table(result)
        return
    successes = f"{result['summary']['successes_strict']}/{len(result['rows'])}"
    arm = {"curve_evaluations": grid, "curves": curves, "successes": successes}
    best_energy_figure({name: arm}, out / f"{name}.png", title=title)
    print_table(result)


def print_table(result: dict) -> None:
    s = result["summary"]
    print(f"{result['name']}  ({result['system']}, commit {result['commit'][:7]})")
    print("seed  evals  strict  graph  t_strict_s  best_eV  skipped  nonfinite")
    for r in result["rows"]:
        t = r["seconds_to_success_strict"]
        print(
            f"{r['seed']:4d}  {r['evaluations']:5d}  {r['first_success_strict'] or '-':>6}  "
            f"{r['first_success_graph'] or '-':>5}  {f'{t:.0f}' if t is not None else '-':>10}  "
            f"{r['best_energy_above_min']:+7.3f}  {r['n_skipped_steps']:7d}  "
            f"{r['nonfinite_params_from_iteration'] if r['nonfinite_params_from_iteration'] is not None else '-':>9}"
        )
    print(
        f"successes strict {s['successes_strict']}/{s['n_seeds']}, graph {s['successes_graph']}, "
        f"mean evaluation at success {s['mean_evaluation_at_success_strict']}, "
        f"mean best {s['mean_best_energy_above_min']:+.3f} eV, "
        f"median seconds to success {s['median_seconds_to_success_strict']}, "
        f"program {s['wall_seconds_program']}"
    )


if __name__ == "__main__":
    main()
