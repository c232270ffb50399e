"""How often a heptamer run generates the wheel, and from which kind of start.

    python benchmarks/wheels.py WORKDIR [WORKDIR ...]

For each finished (or partial) heptamer run directory: per iteration, the valid samples
whose raw bond graph is the wheel (the graph half of the success test), counted apart for
the rows that start from the prior and the rows refinement starts from archived structures
(`SamplerConfig.refine_fraction`; without it every row is a prior row), and per seed the
first wheel sample: its evaluation index and the kind of row that drew it. The graph test
needs no energy, so this measures the sampler alone.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import ase.db
import jax
import jax.numpy as jnp
import numpy as np

from godiff_jax import io, pt111_heptamer
from godiff_jax.analysis import is_wheel_graph, mobile_bond_graph
from godiff_jax.config import from_dict
from godiff_jax.report import check_run
from godiff_jax.search import refine_rows


def count(workdir: Path, system, wheel) -> None:
    check_run(workdir)
    config = from_dict(json.loads((workdir / "config.json").read_text()))
    s = config.sampler
    refine = refine_rows(s.n_samples, s.refine_fraction)
    positions, rows = [], []
    with ase.db.connect(workdir / io.DATABASE) as db:
        for r in db.select(valid=1):
            positions.append(np.asarray(r.positions)[system.n_template :])
            rows.append((int(r.seed), int(r.iteration), int(r.evaluation), int(r["index"])))
    is_wheel = np.concatenate(
        [
            np.asarray(wheel(jnp.asarray(np.stack(positions[i : i + 1024]))))
            for i in range(0, len(positions), 1024)
        ]
    )
    per_iteration = defaultdict(lambda: np.zeros((2, 2), int))  # [prior/refine, wheels/all]
    first: dict[int, tuple[int, str]] = {}
    for (seed, it, evaluation, index), w in sorted(
        zip(rows, is_wheel, strict=True), key=lambda t: t[0][2]
    ):
        kind = int(refine[index])
        per_iteration[it][kind] += (int(w), 1)
        if w and seed not in first:
            first[seed] = (evaluation, "refine" if kind else "prior")
    print(f"{workdir} (refine_fraction {s.refine_fraction})")
    print("| iteration | prior rows: wheels / samples | refine rows: wheels / samples |")
    print("|---|---|---|")
    total = np.zeros((2, 2), int)
    for it in sorted(per_iteration):
        (pw, pn), (rw, rn) = per_iteration[it]
        total += per_iteration[it]
        print(f"| {it} | {pw} / {pn} | {rw} / {rn} |")
    (pw, pn), (rw, rn) = total
    print(f"| all | {pw} / {pn} | {rw} / {rn} |")
    seeds = sorted({r[0] for r in rows})
    print(
        "first wheel per seed (evaluation, row): "
        + ", ".join(
            f"{seed}: {first[seed][0]} {first[seed][1]}" if seed in first else f"{seed}: -"
            for seed in seeds
        )
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("workdirs", type=Path, nargs="+")
    args = p.parse_args(argv)
    system = pt111_heptamer()
    wheel = jax.jit(jax.vmap(lambda x: is_wheel_graph(mobile_bond_graph(system, x))))
    for workdir in args.workdirs:
        count(workdir, system, wheel)


if __name__ == "__main__":
    main()
