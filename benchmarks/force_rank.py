"""Would a force term in the Boltzmann weights rank a heptamer run's samples by basin?

    python benchmarks/force_rank.py WORKDIR [--last 3]

GO-Diff weights raw samples by their single-point energy E. Each evaluation also returns
the forces F, and E - c |F|^2 is the energy after one Newton step for c = h / 2 with an
inverse curvature h (ASE's guess: 1/70 Å^2/eV). For every seed of a finished heptamer run
directory, the samples of the last iterations are relaxed (FIRE, as the success test) and
this prints, for several c, the rank correlation of E - c |F|^2 with the relaxed energy,
and the mean and lowest relaxed energy of the 8 samples each ranks lowest (the low end is
all a cold buffer uses).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import spearmanr

from godiff_jax import pt111_heptamer
from godiff_jax.analysis import HEPTAMER_EMT_MINIMUM
from godiff_jax.potentials.emt import emt_energy_fn
from godiff_jax.relax import relax_batch
from godiff_jax.report import check_run, read_evaluated

C = (0.0, 1 / 140, 1 / 70, 1 / 35, 1 / 10)  # Å^2/eV
LOWEST = 8


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("workdir", type=Path)
    p.add_argument("--last", type=int, default=3, help="iterations at the end of the run")
    args = p.parse_args(argv)
    check_run(args.workdir)
    system = pt111_heptamer()
    energy_fn = emt_energy_fn(system)
    grad = jax.jit(jax.vmap(jax.grad(energy_fn)))
    rho, mean_low, min_low = [], [], []
    print("c (Å^2/eV):", " ".join(f"{c:.4f}" for c in C))
    for seed, d in sorted(read_evaluated(args.workdir, system).items()):
        idx = np.flatnonzero(d["iteration"] > d["iteration"].max() - args.last)
        x = jnp.asarray(d["positions"][idx])
        f2 = (np.asarray(grad(x)) ** 2).sum((1, 2))  # the stored energies, their forces
        relaxed = np.asarray(relax_batch(energy_fn, x, fmax=0.01, max_steps=2000).energy)
        relaxed = relaxed - HEPTAMER_EMT_MINIMUM
        scores = [d["energy"][idx] - c * f2 for c in C]
        low = [np.argsort(score)[:LOWEST] for score in scores]
        rho.append([spearmanr(score, relaxed).statistic for score in scores])
        mean_low.append([relaxed[i].mean() for i in low])
        min_low.append([relaxed[i].min() for i in low])
        print(
            f"seed {seed} ({len(idx)} samples): Spearman "
            + " ".join(f"{r:+.2f}" for r in rho[-1])
            + f" | lowest {LOWEST}, mean relaxed "
            + " ".join(f"{r:+.3f}" for r in mean_low[-1])
        )
    for label, table in (("Spearman", rho), ("mean relaxed", mean_low), ("min relaxed", min_low)):
        print(f"mean over seeds, {label}:", " ".join(f"{r:+.3f}" for r in np.mean(table, 0)))


if __name__ == "__main__":
    main()
