"""Random structure search on the heptamer as AGOX runs it, every single point counted.

    python benchmarks/rss.py --seeds 8 --evaluations 10000 --name cpu_heptamer8_rss
    python benchmarks/rss.py --set contiguous=false --name X   # AGOX's surface example

Random structures in the confinement box as AGOX's RandomGenerator places them, each
relaxed with ASE's BFGS (in JAX) on the JAX EMT, with AGOX's defaults
(`godiff_jax.baselines.AGOX_DEFAULTS`, written into the result file with their sources).
Every single point is an evaluation, relaxation steps included (n steps cost n + 1), and
the heptamer's success tests (strict and graph-only, benchmarks/quality.py) run on every
evaluated structure. All seeds are one vmapped program. Writes benchmarks/results/NAME.json
in the quality harness's schema (benchmarks/results/README.md) and NAME.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

from godiff_jax import pt111_heptamer
from godiff_jax.baselines import AGOX_DEFAULTS, AgoxSettings, make_search, run_search, score
from godiff_jax.potentials.emt import emt_energy_fn
from godiff_jax.report import summarise
from godiff_jax.runtime import keep_heap_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import RESULTS, git, heptamer_tests, result_header, write_result  # noqa: E402

METHODS = {
    "rss": ("rss.py", 10_000, "cpu_heptamer8_rss"),
    "basin_hopping": ("basin_hopping.py", 5_000, "cpu_heptamer8_basin_hopping"),
}


def parse_settings(pairs: list[str]) -> AgoxSettings:
    """NAME=VALUE overrides of `AgoxSettings` fields, typed by the field's default."""
    settings = AgoxSettings()
    changes = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in AgoxSettings._fields:
            raise SystemExit(f"--set {pair!r}: use NAME=VALUE with NAME in {AgoxSettings._fields}")
        default = getattr(settings, name)
        if isinstance(default, bool):
            if value.lower() not in ("true", "false"):
                raise SystemExit(f"--set {pair!r}: {name} takes true or false")
            changes[name] = value.lower() == "true"
        else:
            changes[name] = type(default)(value)
    return settings._replace(**changes)


def main(method: str = "rss", argv: list[str] | None = None) -> dict:
    script, default_evaluations, default_name = METHODS[method]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--name", default=default_name, help="results file stem")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--evaluations", type=int, default=default_evaluations, help="per seed")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--chunk", type=int, default=500, help="ticks per jitted scan")
    p.add_argument("--out", default=str(RESULTS), help="folder for NAME.json and NAME.png")
    args = p.parse_args(argv)

    jax.config.update("jax_enable_x64", True)  # ASE's BFGS and EMT are float64
    keep_heap_memory()
    settings = parse_settings(args.set)
    system = pt111_heptamer()
    seeds = list(range(args.seed, args.seed + args.seeds))
    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))

    init, tick = make_search(system, emt_energy_fn(system), settings, method)

    def progress(done: int, seconds: float) -> None:
        print(
            f"  {done:6d} / {args.evaluations} evaluations per seed, {seconds:6.1f} s", flush=True
        )

    t0 = time.perf_counter()
    trace = run_search(init, tick, seeds, args.evaluations, args.chunk, progress)
    wall = time.perf_counter() - t0

    t1 = time.perf_counter()
    tests, e_min, available = heptamer_tests(system)
    rows, grid, curves = score(trace, seeds, tests, e_min, settings.max_steps)
    scoring = time.perf_counter() - t1
    summary = summarise(rows, args.evaluations, grid, curves, available)
    summary["wall_seconds_program"] = wall
    summary["wall_seconds_scoring"] = scoring

    defaults = AgoxSettings()
    result = {
        **result_header(args.name, "heptamer", script, argv, commit, dirty),
        "method": method,
        "preset": None,
        "overrides": [
            f"{k}={v}" for k, v in settings._asdict().items() if v != getattr(defaults, k)
        ],
        "settings": {
            **settings._asdict(),
            "evaluations_per_seed": args.evaluations,
            "counting": "every single point; a relaxation of n BFGS steps costs n + 1",
            "dtype": "float64",
        },
        "agox_defaults": {k: {"value": v, "source": src} for k, (v, src) in AGOX_DEFAULTS.items()},
        "seeds": seeds,
        "e_min": e_min,
        "summary": summary,
        "rows": rows,
    }
    out = Path(args.out)
    title = f"heptamer: {method.replace('_', ' ')} (AGOX defaults), EMT"
    write_result(result, out, grid, curves, title)
    print("seed  relaxations  capped  mean_steps  accepted")
    for r in rows:
        steps = r["mean_relax_steps"]
        print(
            f"{r['seed']:4d}  {r['n_relaxations']:11d}  {r['n_capped']:6d}  "
            f"{f'{steps:.1f}' if steps is not None else '-':>10}  "
            f"{r['n_accepted'] if method == 'basin_hopping' else '-':>8}"
        )
    print(f"scoring {scoring:.0f} s; wrote {out / args.name}.json and .png")
    return result


if __name__ == "__main__":
    main("rss")
