"""Where heptamer seeds end up: each seed's lowest single points, relaxed and named.

    python benchmarks/stuck.py WORKDIR [--lowest 16] [--name NAME]

For every seed of a finished heptamer run directory: the `lowest` structures by single-point
energy over the whole run and the `lowest` of its last iteration, each relaxed with JAX EMT
(FIRE to 0.01 eV/Å, template rigid, as the success test does) and named by the motif of the
relaxed island: its bond-graph components, bond count and degrees, and the known EMT motifs
of DESIGN.md where the relaxed energy matches one (hexagon on hcp or fcc hollows, 4+3
trapezoid, rhombus + 1, misregistered hexagon). GO-Diff's single points are raw samples, so
their energies say little about which basin a seed is in; the relaxed motifs do. To
measure how little, every sample of the last iteration is relaxed too: the rank correlation
of single-point and relaxed energies, and how many samples relax into the minimum's basin
(relaxed within 0.05 eV of it with the wheel bond graph; the strict success test reads the
graph of the raw sample, so its count can be lower) with the best single-point rank among
them. Writes benchmarks/results/NAME_stuck.json with --name.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import jax
import numpy as np
from scipy.sparse.csgraph import connected_components
from scipy.stats import rankdata, spearmanr

from godiff_jax import pt111_heptamer
from godiff_jax.analysis import HEPTAMER_EMT_MINIMUM, is_wheel_graph, mobile_bond_graph
from godiff_jax.potentials.emt import emt_energy_fn
from godiff_jax.relax import relax_batch
from godiff_jax.report import check_run, read_evaluated

ROOT = Path(__file__).resolve().parents[1]

# Relaxed EMT energies above the minimum of the motifs DESIGN.md lists (eV).
KNOWN = {
    "hexagon, hcp hollows (the minimum)": 0.0,
    "hexagon, fcc hollows": 0.006,
    "4+3 trapezoid": 0.219,
    "rhombus + 1": 0.262,
    "hexagon centred on top of a surface atom": 0.765,
}
BASIN_EV = 0.05  # relaxed this close to the minimum (the strict success test's tolerance)
MATCH_EV = 0.01  # a relaxed energy this close to a known motif's is named after it
ON_TOP_A = 1.5  # an atom this far above the island's lowest layer sits in a second layer


def motif(system, x: np.ndarray, above_min: float) -> tuple[str, bool]:
    """(a name for the relaxed island x [7, 3], whether its bond graph is the wheel)."""
    adj = np.asarray(mobile_bond_graph(system, x))
    deg = adj.sum(1)
    wheel = bool(is_wheel_graph(adj))
    if wheel:
        base = "wheel graph"
    else:
        _, label = connected_components(adj, directed=False)
        sizes = np.bincount(label).tolist()
        sizes.sort(reverse=True)
        parts = "+".join(map(str, sizes))
        degrees = "".join(map(str, sorted(deg.tolist(), reverse=True)))
        base = f"islands {parts}, {adj.sum() // 2} bonds, degrees {degrees}"
    z = x[:, 2]
    if np.any(z - z.min() > ON_TOP_A):
        base += f", {int(np.sum(z - z.min() > ON_TOP_A))} on top"
    for name, e in KNOWN.items():
        if abs(above_min - e) <= MATCH_EV:
            return f"{name} ({base})", wheel
    return base, wheel


def relaxed_motifs(system, energy_fn, xs: np.ndarray) -> list[tuple[float, str, bool]]:
    """(relaxed energy above the minimum, motif, wheel graph) of each structure of xs [N, 7, 3]."""
    res = jax.tree.map(np.asarray, relax_batch(energy_fn, xs, fmax=0.01, max_steps=2000))
    above = res.energy - HEPTAMER_EMT_MINIMUM
    return [(float(a), *motif(system, p, a)) for a, p in zip(above, res.positions, strict=True)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("workdir", type=Path)
    p.add_argument("--lowest", type=int, default=16, help="structures per seed and group")
    p.add_argument("--name", default=None, help="write benchmarks/results/NAME_stuck.json")
    args = p.parse_args(argv)
    check_run(args.workdir)
    system = pt111_heptamer()
    energy_fn = emt_energy_fn(system)
    evaluated = read_evaluated(args.workdir, system)
    out = {"workdir": str(args.workdir), "lowest": args.lowest, "seeds": {}}
    for seed, d in sorted(evaluated.items()):
        # Every sample of the last iteration is relaxed once; its `lowest` group is a subset.
        idx = np.flatnonzero(d["iteration"] == d["iteration"].max())
        found = relaxed_motifs(system, energy_fn, d["positions"][idx])
        single = d["energy"][idx] - HEPTAMER_EMT_MINIMUM
        groups = {
            "run": relaxed_motifs(
                system, energy_fn, d["positions"][np.argsort(d["energy"])[: args.lowest]]
            ),
            "last iteration": [found[i] for i in np.argsort(single)[: args.lowest]],
        }
        row = {}
        for group, found_g in groups.items():
            best = min(found_g)
            counts = collections.Counter(m for _, m, _ in found_g).most_common()
            row[group] = {"best_above_min": best[0], "best_motif": best[1], "motifs": counts}
            print(f"seed {seed} {group}: best relaxed {best[0]:+.3f} eV, {best[1]}")
            for m, n in counts[:4]:
                print(f"    {n:2d} x {m}")
        relaxed = np.array([a for a, _, _ in found])
        rank = rankdata(single, method="min")  # 1 = lowest single point
        in_min = (relaxed <= BASIN_EV) & np.array([w for _, _, w in found])
        row["last iteration, every sample"] = {
            "n": len(idx),
            "spearman_single_vs_relaxed": float(spearmanr(single, relaxed).statistic),
            "n_relax_to_minimum": int(in_min.sum()),
            "best_rank_relaxing_to_minimum": int(rank[in_min].min()) if in_min.any() else None,
            "single_point_median_above_min": float(np.median(single)),
            "relaxed_median_above_min": float(np.median(relaxed)),
        }
        r = row["last iteration, every sample"]
        print(
            f"seed {seed} last iteration, all {r['n']}: Spearman(single point, relaxed) "
            f"{r['spearman_single_vs_relaxed']:+.2f}; {r['n_relax_to_minimum']} relax into the "
            f"minimum's basin, best single-point rank among them {r['best_rank_relaxing_to_minimum']}"
        )
        out["seeds"][str(seed)] = row
    if args.name:
        path = ROOT / "benchmarks" / "results" / f"{args.name}_stuck.json"
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
