"""Markdown tables and one figure from several `benchmarks/quality.py` result files.

    python benchmarks/quality_table.py benchmarks/results/cpu_adatom8_*.json \
        --figure benchmarks/results/cpu_adatom8_ablation.png

Prints the summary table (one row per arm); with --paired, every arm against the first on
the seeds the arm ran (McNemar's exact test on the strict outcomes; the first arm must hold
all of them); then per-seed rows of every arm. One arm run on several seed sets is given as
its files joined by "+": the rows are pooled (same system, budget and settings required), so
that arms compare over all their seeds:

    python benchmarks/quality_table.py --paired \
        benchmarks/results/cpu_heptamer8_default_1206.json+benchmarks/results/cpu_heptamer8s24_default_1206.json \
        benchmarks/results/cpu_heptamer8_ts1000.json+benchmarks/results/cpu_heptamer8s24_ts1000.json
"""

import argparse
import json
from pathlib import Path

import numpy as np

from godiff_jax.config import from_dict
from godiff_jax.io import config_diff
from godiff_jax.plots import best_energy_figure
from godiff_jax.report import paired_successes, summarise


def fmt(v, spec="", none="-"):
    return none if v is None else format(v, spec)


def pool(parts: list[dict]) -> dict:
    """One arm from result files of the same settings on different seeds."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    names = "+".join(a["name"] for a in parts)
    for a in parts[1:]:
        if a["system"] != first["system"] or a["summary"]["budget"] != first["summary"]["budget"]:
            raise SystemExit(f"cannot pool {names}: another system or budget in {a['name']}")
        # Options added since an older file was written take their defaults (from_dict).
        differ = config_diff(from_dict(first["settings"]), from_dict(a["settings"]))
        if differ or first.get("init_params") != a.get("init_params"):
            raise SystemExit(f"cannot pool {names}: they differ in {differ or 'init_params'}")
    rows = [r for a in parts for r in a["rows"]]
    seeds = [r["seed"] for r in rows]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"cannot pool {names}: a seed appears twice")
    s = first["summary"]
    tests = ("strict", "graph") if s["successes_graph"] is not None else ("strict",)
    curves = np.concatenate([np.asarray(a["curves"], float) for a in parts])
    curves = np.where(curves < 0, np.nan, curves)
    summary = summarise(rows, s["budget"], np.asarray(s["curve_evaluations"]), curves, tests)
    # Separate programs, often on other days and machine speeds: no shared clock.
    summary["wall_seconds_program"] = None
    for test in ("strict", "graph"):
        summary[f"median_seconds_to_success_{test}"] = None
    return {
        **first,
        "name": names,
        "commit": "/".join(dict.fromkeys(a["commit"] for a in parts)),
        "dirty": any(a["dirty"] for a in parts),
        "command": "; ".join(a["command"] for a in parts),
        "seeds": seeds,
        "summary": summary,
        "rows": rows,
        "curves": curves.tolist(),
    }


def rows_on_seeds_of(ref: dict, arm: dict) -> list[dict] | None:
    """The reference's rows on the arm's seeds, in the arm's order; None when the arm is of
    another system or ran a seed the reference lacks (a pooled reference pairs with an arm
    run on any of its seed sets)."""
    by_seed = {r["seed"]: r for r in ref["rows"]}
    seeds = [r["seed"] for r in arm["rows"]]
    if arm["system"] != ref["system"] or not set(seeds) <= by_seed.keys():
        return None
    return [by_seed[s] for s in seeds]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("files", nargs="+", help="result files; FILE+FILE pools one arm's seed sets")
    p.add_argument("--figure", type=Path, default=None)
    p.add_argument("--paired", action="store_true", help="every arm against the first, by seed")
    args = p.parse_args()
    arms = [pool([json.loads(Path(f).read_text()) for f in arg.split("+")]) for arg in args.files]
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
            f"| {a['name']} | {settings or 'default'} | {'/'.join(c[:7] for c in a['commit'].split('/'))}{'+' if a['dirty'] else ''} "
            f"| {s['successes_strict']}/{s['n_seeds']} | {fmt(s['successes_graph'])} "
            f"| {fmt(s['mean_evaluation_at_success_strict'], '.0f')} / "
            f"{fmt(s['median_evaluation_at_success_strict'], '.0f')} "
            f"| {s['mean_best_energy_above_min']:+.3f} "
            f"| {fmt(s['median_seconds_to_success_strict'], '.0f')} "
            f"| {fmt(s['wall_seconds_program'], '.0f')} | {'yes' if s['all_losses_finite'] else 'NO'} |"
        )
    if args.paired:
        ref = arms[0]
        print(
            f"\nPaired against {ref['name']} on the seeds each arm ran, strict test "
            "(only the seeds where the arms disagree count):\n"
        )
        print(
            "| arm | seeds | successes: arm / first on them | both | only the first "
            "| only the arm | neither | McNemar exact p |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for a in arms[1:]:
            ref_rows = rows_on_seeds_of(ref, a)
            if ref_rows is None:
                print(f"| {a['name']} | not paired (another system or seeds it lacks) |" + " |" * 6)
                continue
            budget = min(ref["summary"]["budget"], a["summary"]["budget"])
            c = paired_successes(ref_rows, a["rows"], budget)
            print(
                f"| {a['name']} | {len(ref_rows)} "
                f"| {c['both'] + c['only_b']} / {c['both'] + c['only_a']} "
                f"| {c['both']} | {c['only_a']} | {c['only_b']} | {c['neither']} "
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
