"""The paper's Table 1 from the result files of every method (quality-harness schema).

    python benchmarks/table1.py \
        "RSS=benchmarks/results/cpu_heptamer8_rss.json" \
        "Basin hopping=benchmarks/results/cpu_heptamer8_basin_hopping.json" \
        "GO-Diff, 500 training steps=benchmarks/results/cpu_heptamer8_trainstop500.json"

Each argument is LABEL=FILE. A row labelled as one of the paper's ("GO-Diff", "GO-Diff +
FFG", "GO-Diff + Transfer") must come from a run at the paper's settings of that method
(`quality.py --preset paper`, the experiment script's PAPER), whatever the defaults are;
label any other run otherwise ("GO-Diff, default settings"). Prints a markdown table: budget, successes out of the seeds
by the strict and the graph-only test, each with a 95 % Clopper-Pearson interval, mean
evaluation at a strict success, median best single point above the minimum, and the
command that made the row; then the paper's own Table 1 (MACE-MP-0 energies) beside it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
from pathlib import Path

from scipy.stats import beta

from godiff_jax.config import from_dict
from godiff_jax.io import config_diff

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
# The paper's rows and the experiment scripts whose PAPER settings they must have run.
PAPER_ROWS = {
    "GO-Diff": "heptamer",
    "GO-Diff + FFG": "heptamer_ffg",
    "GO-Diff + Transfer": "heptamer_transfer",
}

# The paper's Table 1 (MACE-MP-0, AGOX for RSS): method, budget, successes, mean success
# evaluation.
PAPER = [
    ("RSS", 10_000, "1/8", 7816),
    ("GO-Diff", 2_560, "5/8", 1667),
    ("GO-Diff + FFG", 2_560, "8/8", 1994),
    ("GO-Diff + Transfer", 1_280, "7/8", 591),
]


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k successes in n trials."""
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def _successes(rows: list[dict], key: str) -> str:
    k, n = sum(r[key] is not None for r in rows), len(rows)
    lo, hi = clopper_pearson(k, n)
    return f"{k}/{n} ({lo:.2f}-{hi:.2f})"


def check_paper_row(label: str, result: dict, path: str) -> None:
    """Refuse a paper row (PAPER_ROWS) whose run did not have that method's paper settings."""
    if label not in PAPER_ROWS:
        return
    sys.path.insert(0, str(EXPERIMENTS))
    paper = importlib.import_module(PAPER_ROWS[label]).PAPER
    diff = config_diff(from_dict(result["settings"]), paper)  # {name: (ran, paper)}
    transfer = label == "GO-Diff + Transfer"
    if diff or transfer != (result.get("init_params") is not None):
        raise SystemExit(
            f"{path}: the {label!r} row is the paper's settings ({PAPER_ROWS[label]}.py PAPER, "
            f"quality.py --preset paper{', from a trained model' if transfer else ''}), but "
            f"this run differs (ran, paper): {diff or 'its starting model'}; label it "
            f"otherwise, e.g. {label + ', default settings'!r}"
        )


def row(label: str, result: dict) -> str:
    rows = result["rows"]
    hits = [r["first_success_strict"] for r in rows if r["first_success_strict"] is not None]
    mean = f"{statistics.mean(hits):.0f}" if hits else "-"
    best = statistics.median(r["best_energy_above_min"] for r in rows)
    budget = result["summary"]["budget"]
    return (
        f"| {label} | {budget:,} | {_successes(rows, 'first_success_strict')} | "
        f"{_successes(rows, 'first_success_graph')} | {mean} | {best:+.3f} | "
        f"`{result['command']}` (commit {result['commit'][:7]}) |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("methods", nargs="+", help="LABEL=FILE")
    args = p.parse_args()
    print(
        "| method | evaluations | success strict (95 % CI) | success graph-only (95 % CI) "
        "| mean evaluation at success (strict) | median best above min (eV) | command |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for item in args.methods:
        label, _, path = item.partition("=")
        result = json.loads(Path(path).read_text())
        check_paper_row(label, result, path)
        print(row(label, result))
    print("\nThe paper's Table 1 (MACE-MP-0 energies; success by the bond graph alone):\n")
    print("| method | evaluations | success | mean success evaluation |")
    print("| --- | --- | --- | --- |")
    for method, budget, success, mean in PAPER:
        print(f"| {method} | {budget:,} | {success} | {mean:,} |")


if __name__ == "__main__":
    main()
