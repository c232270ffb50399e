"""Command-line driver shared by the experiment scripts (`experiments/*.py`)."""

from __future__ import annotations

import argparse
import json
import time
import typing
from collections.abc import Callable
from pathlib import Path

import numpy as np

from godiff_jax import io
from godiff_jax.config import PRESETS, SearchConfig, apply_preset, field_type
from godiff_jax.evaluate import Evaluator
from godiff_jax.runner import run
from godiff_jax.runtime import keep_heap_memory
from godiff_jax.search import SuccessFn
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
        help="override one setting, e.g. --set training.train_steps=4000 or train_steps=4000 (repeatable)",
    )
    return p


def _parse_value(text: str, declared: object) -> object:
    """A --set value as its field's declared type (bool: true/false in any case)."""
    options = typing.get_args(declared) or (declared,)
    if text.lower() in ("none", "null"):
        if type(None) not in options:
            raise ValueError("this setting cannot be none")
        return None
    kind = next(t for t in options if t is not type(None))
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError("expected true or false")
        return text.lower() == "true"
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    return text


def apply_overrides(config: SearchConfig, assignments: list[str]) -> SearchConfig:
    """SearchConfig with `NAME=VALUE` overrides; NAME dotted (`model.features`) or a flat
    alias (`features`), VALUE read as the field's type."""
    changes = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected NAME=VALUE, e.g. training.train_steps=500")
        try:
            changes[name] = _parse_value(text, field_type(name))
        except KeyError as err:
            raise SystemExit(f"--set {item!r}: {err.args[0]}") from None
        except ValueError as err:
            raise SystemExit(f"--set {item!r}: {err}") from None
    try:
        return config.replace(**changes)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"--set: {err}") from None


def run_experiment(
    system: System,
    config: SearchConfig,
    quick: SearchConfig,
    *,
    evaluator: Evaluator,
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
    print(json.dumps(cfg.to_dict()))
    t0 = time.perf_counter()
    success = make_success(system) if make_success is not None else None
    state = run(
        system,
        cfg,
        workdir,
        evaluator=evaluator,
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
