"""Markdown tables and one figure from several `benchmarks/quality.py` result files.

    python benchmarks/quality_table.py benchmarks/results/cpu_adatom8_*.json \
        --figure benchmarks/results/cpu_adatom8_ablation.png

Prints the summary table (one row per arm); with --paired, every arm that ran the same
seeds against the first (McNemar's exact test on the strict outcomes); then per-seed rows of
every arm.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from godiff_jax.plots import best_energy_figure
from godiff_jax.report import paired_successes


def fmt(v, spec="", none="-"):
    return none if v is None else format(v, spec)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--figure", type=Path, default=None)
    p.add_argument("--paired", action="store_true", help="every arm against the first, by seed")
    args = p.parse_args()
    arms = [json.loads(f.read_text()) for f in args.files]
    print(
        "| arm | settings | commit | strict | graph | mean / median evaluation at success "
        "| mean best above min (eV) | median s to success | program s | losses finite |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for a in arms:
        s = a["summary"]
        presets = [a["preset"]] if isinstance(a["preset"], str) else a["preset"] or []
        start = [f"--init-params {a['init_params']}"] if a.get("init_params") else []
        settings = " ".join([f"--preset {n}" for n in presets] + start + a["overrides"])
        print(
            f"| {a['name']} | {settings or 'default'} | {a['commit'][:7]}{'+' if a['dirty'] else ''} "
            f"| {s['successes_strict']}/{s['n_seeds']} | {fmt(s['successes_graph'])} "
            f"| {fmt(s['mean_evaluation_at_success_strict'], '.0f')} / "
            f"{fmt(s['median_evaluation_at_success_strict'], '.0f')} "
            f"| {s['mean_best_energy_above_min']:+.3f} "
            f"| {fmt(s['median_seconds_to_success_strict'], '.0f')} "
            f"| {fmt(s['wall_seconds_program'], '.0f')} | {'yes' if s['all_losses_finite'] else 'NO'} |"
        )
    if args.paired:
        ref = arms[0]
        print(f"\nPaired against {ref['name']}, strict test (seeds where the arms disagree):\n")
        print(f"| arm | both | only {ref['name']} | only the arm | neither | McNemar exact p |")
        print("|---|---|---|---|---|---|")
        for a in arms[1:]:
            budget = min(ref["summary"]["budget"], a["summary"]["budget"])
            same_seeds = sorted(r["seed"] for r in a["rows"]) == sorted(
                r["seed"] for r in ref["rows"]
            )
            if a["system"] != ref["system"] or not same_seeds:
                print(f"| {a['name']} | not paired (another system or other seeds) | | | | |")
                continue
            c = paired_successes(ref["rows"], a["rows"], budget)
            print(
                f"| {a['name']} | {c['both']} | {c['only_a']} | {c['only_b']} | {c['neither']} "
                f"| {c['p_two_sided']:.3f} |"
            )
    for a in arms:
        print(f"\n{a['name']} (`{a['command']}`):\n")
        print(
            "| seed | evaluations | first success strict | graph | s to success | best above min (eV) "
            "| skipped steps | clipped share |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in a["rows"]:
            print(
                f"| {r['seed']} | {r['evaluations']} | {fmt(r['first_success_strict'])} "
                f"| {fmt(r['first_success_graph'])} | {fmt(r['seconds_to_success_strict'], '.0f')} "
                f"| {fmt(r['best_energy_above_min'], '+.3f')} | {r['n_skipped_steps']} "
                f"| {fmt(r['clipped_fraction_mean'], '.2f')} |"
            )
    if args.figure:
        best_energy_figure(
            {
                a["name"]: {
                    "curve_evaluations": a["summary"]["curve_evaluations"],
                    "curves": np.where(np.asarray(a["curves"]) < 0, np.nan, a["curves"]),
                    "successes": f"{a['summary']['successes_strict']}/{a['summary']['n_seeds']}",
                }
                for a in arms
            },
            args.figure,
            title=f"{arms[0]['system']}: best single point against evaluations",
            seed_lines=len(arms) <= 2,
        )
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
