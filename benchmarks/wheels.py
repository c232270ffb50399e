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
from pathlib import Path

import jax
import numpy as np

from godiff_jax import pt111_heptamer
from godiff_jax.analysis import _is_wheel_batch
from godiff_jax.config import from_dict
from godiff_jax.report import check_run, read_evaluated
from godiff_jax.search import refine_rows


def count(workdir: Path, system, wheel) -> None:
    check_run(workdir)
    s = from_dict(json.loads((workdir / "config.json").read_text())).sampler
    refine = refine_rows(s.n_samples, s.refine_fraction)
    counts = {}  # iteration -> [[prior wheels, prior samples], [refine wheels, refine samples]]
    first = {}
    for seed, d in sorted(read_evaluated(workdir, system).items()):
        x = d["positions"]
        is_wheel = np.concatenate(
            [np.asarray(wheel(x[i : i + 1024])) for i in range(0, len(x), 1024)]
        )
        kind = refine[d["index"]].astype(int)
        for it, k, w in zip(d["iteration"], kind, is_wheel, strict=True):
            counts.setdefault(int(it), np.zeros((2, 2), int))[k] += (int(w), 1)
        hits = np.flatnonzero(is_wheel)  # read_evaluated sorts by evaluation
        first[seed] = (
            f"{d['evaluation'][hits[0]]} {('prior', 'refine')[kind[hits[0]]]}" if hits.size else "-"
        )
    print(f"{workdir} (refine_fraction {s.refine_fraction})")
    print("| iteration | prior rows: wheels / samples | refine rows: wheels / samples |")
    print("|---|---|---|")
    for it, ((pw, pn), (rw, rn)) in sorted(counts.items()):
        print(f"| {it} | {pw} / {pn} | {rw} / {rn} |")
    (pw, pn), (rw, rn) = sum(counts.values())
    print(f"| all | {pw} / {pn} | {rw} / {rn} |")
    print(
        "first wheel per seed (evaluation, row): "
        + ", ".join(f"{k}: {v}" for k, v in first.items())
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("workdirs", type=Path, nargs="+")
    args = p.parse_args(argv)
    system = pt111_heptamer()
    wheel = jax.jit(lambda xs: _is_wheel_batch(system, xs))
    for workdir in args.workdirs:
        count(workdir, system, wheel)


if __name__ == "__main__":
    main()
