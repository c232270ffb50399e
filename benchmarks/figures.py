"""The paper's figures from our results, into benchmarks/figures/ (committed PNGs).

    python benchmarks/figures.py
    python benchmarks/figures.py benchmarks/results/A.json benchmarks/results/B.json \
        --label "GO-Diff" --label "RSS" --adatom-run runs/adatom8 --seed 2

- figure2_heptamer.png: best energy above the minimum against evaluations per method
  (a faint line per seed, the mean bold, a cross at each seed's first strict success);
- heptamer_success_fraction.png: the fraction of seeds succeeded (strict test) against
  evaluations, a step curve per method;
- figure1_adatom.png: one seed of an adatom run directory, its sampled adatom positions
  over the relaxed EMT landscape and its energies per iteration, coloured by kT.

The heptamer curves come from result files of benchmarks/quality.py and benchmarks/rss.py
(schema: benchmarks/results/README.md); the adatom figure from a run directory
(structures.db, metrics.jsonl), which is not in git.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from godiff_jax.plots import best_energy_figure, result_arm, success_fraction_figure
from godiff_jax.report import adatom_run_figure, check_run, run_system

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HEPTAMER = [
    RESULTS / "cpu_heptamer8_trainstop500.json",
    RESULTS / "cpu_heptamer8_rss.json",
    RESULTS / "cpu_heptamer8_basin_hopping.json",
]
ADATOM_RUN = Path("/work/queue/runs/cpu_adatom8_reference_preset")
METHODS = {"rss": "RSS", "basin_hopping": "basin hopping"}  # benchmarks/rss.py's `method`


def label(result: dict) -> str:
    """The method (GO-Diff where the file names none), then what the name adds to it:
    cpu_heptamer8_trainstop500 -> "GO-Diff, trainstop500", cpu_heptamer8_rss -> "RSS"."""
    method = result.get("method")
    tail = re.sub(r"^(cpu|gpu)_[a-z]+\d*_", "", result["name"])
    base = METHODS.get(method, "GO-Diff")
    return base if tail == method else f"{base}, {tail}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("files", nargs="*", type=Path, default=HEPTAMER, help="heptamer result files")
    p.add_argument("--label", action="append", default=[], help="a file's label, in order")
    p.add_argument("--adatom-run", type=Path, default=ADATOM_RUN, help="adatom run directory")
    p.add_argument("--seed", type=int, default=0, help="the adatom run's seed to draw")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "figures")
    args = p.parse_args(argv)
    if len(args.label) > len(args.files):
        p.error(f"{len(args.label)} labels for {len(args.files)} files")

    results = [json.loads(f.read_text()) for f in args.files]
    names = args.label + [label(r) for r in results[len(args.label) :]]
    arms = {name: result_arm(r) for name, r in zip(names, results, strict=True)}
    args.out.mkdir(parents=True, exist_ok=True)
    written = [
        best_energy_figure(
            arms,
            args.out / "figure2_heptamer.png",
            title="Pt7 heptamer on Pt(111), EMT: best energy over 8 seeds",
        ),
        success_fraction_figure(
            arms,
            args.out / "heptamer_success_fraction.png",
            title="Pt7 heptamer on Pt(111), EMT: seeds that found the minimum",
        ),
    ]
    check_run(args.adatom_run)
    system, name = run_system(args.adatom_run)
    if name != "adatom":
        raise SystemExit(f"{args.adatom_run} is not a run of the built-in adatom system")
    written.append(
        adatom_run_figure(args.adatom_run, system, args.seed, args.out / "figure1_adatom.png")
    )
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
