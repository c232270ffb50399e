"""Command-line driver shared by the experiment scripts (`experiments/*.py`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from godiff_jax import io
from godiff_jax.runtime import keep_heap_memory
from godiff_jax.search import PRESETS, SearchConfig, SuccessFn, apply_preset, run
from godiff_jax.system import System


def experiment_parser(description: str, default_workdir: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds, run as one program")
    p.add_argument(
        "--seed-batch",
        type=int,
        default=None,
        help="seeds vmapped together (default: all; fewer loops over groups, for memory)",
    )
    p.add_argument("--workdir", default=default_workdir, help="run directory (resumes if present)")
    p.add_argument("--quick", action="store_true", help="small preset: minutes on a 2-core CPU")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="named settings overlay (reference: every choice of the authors' code)",
    )
    p.add_argument("--iterations", type=int, default=None, help="stop after this many (resumable)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one SearchConfig field, e.g. --set train_steps=4000 (repeatable)",
    )
    return p


def _parse_value(text: str, default: object) -> object:
    """A --set value as the type of the field's default (bool: true/false in any case)."""
    if text.lower() in ("none", "null"):
        return None
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError("expected true or false")
        return text.lower() == "true"
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float) or default is None:  # None: the optional float fields
        return float(text)
    return text


def apply_overrides(config: SearchConfig, assignments: list[str]) -> SearchConfig:
    """SearchConfig with `NAME=VALUE` overrides, each VALUE read as its field's type."""
    fields = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        if not sep or name not in fields:
            raise SystemExit(
                f"--set {item!r}: expected NAME=VALUE with NAME one of {sorted(fields)}"
            )
        try:
            changes[name] = _parse_value(text, getattr(config, name))
        except ValueError as err:
            raise SystemExit(f"--set {item!r}: {err}") from None
    return dataclasses.replace(config, **changes)


def run_experiment(
    system: System,
    config: SearchConfig,
    quick: SearchConfig,
    make_success: Callable[[System], SuccessFn] | None,
    description: str,
    default_workdir: str,
    argv: list[str] | None = None,
) -> None:
    args = experiment_parser(description, default_workdir).parse_args(argv)
    keep_heap_memory()  # XLA re-allocates its buffers every call; keep freed heap mapped
    cfg = apply_overrides(apply_preset(quick if args.quick else config, args.preset), args.set)
    seeds = list(range(args.seed, args.seed + args.seeds))
    workdir = Path(args.workdir)
    print(f"{system.name}: {len(seeds)} seed(s) {seeds}, workdir {workdir}")
    print(json.dumps(dataclasses.asdict(cfg)))
    t0 = time.perf_counter()
    success = make_success(system) if make_success is not None else None
    state = run(
        system,
        cfg,
        workdir,
        seeds=seeds,
        success_fn=success,
        max_iterations=args.iterations,
        progress=not args.no_progress,
        seed_batch=args.seed_batch,
    )
    wall = time.perf_counter() - t0
    summarise(workdir, seeds, state, wall)


def summarise(workdir: Path, seeds: list[int], state, wall: float) -> None:
    rows = io.read_metrics(workdir)
    print(f"\nwall time this invocation: {wall:.1f} s")
    print("seed  iterations  evaluations  best_energy_eV  first_success_eval  first_success_s")
    for seed in seeds:
        last = [r for r in rows if r["seed"] == seed]
        if not last:
            continue
        r = last[-1]
        fs = r["first_success_evaluation"]
        fss = r["first_success_seconds"]
        print(
            f"{seed:4d}  {r['iteration'] + 1:10d}  {r['evaluations']:11d}  "
            f"{r['best_energy']:14.4f}  {fs if fs is not None else '-':>18}  "
            f"{f'{fss:.0f}' if fss is not None else '-':>15}"
            + ("" if r.get("params_finite", True) else "  PARAMETERS NOT FINITE")
        )
    n_succ = int(np.sum(np.asarray(state.first_success) >= 0))
    print(f"successes: {n_succ}/{len(seeds)}")


def main(argv: list[str] | None = None) -> None:
    raise SystemExit("the `godiff` command comes later; run experiments/heptamer.py or adatom.py")
