"""Relaxed EMT energies of the benchmark reference structures, two ways.

    python benchmarks/reference_energies.py    (package installed, or PYTHONPATH=.)

For the hcp and fcc hexagonal Pt7 islands on pt111_heptamer() (built on-lattice 2.2 Å above
the top layer, rattled by 0.02 Å) and the adatom on its minimum site of stepped_pt_adatom()
(rattled), relax the mobile atoms with the template rigid to fmax 0.01 eV/Å:
  - ours: godiff_jax.relax (FIRE in JAX) + the JAX EMT (emt_energy_fn), float64;
  - ASE:  ase.optimize.BFGS + ase.calculators.emt.EMT.
DESIGN.md section 2 gives 24.9874 eV (hcp), +0.006 eV (fcc) and 5.5058 eV (adatom).
"""

from __future__ import annotations

import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.optimize import BFGS  # noqa: E402

from godiff_jax.analysis import (  # noqa: E402
    ADATOM_EMT_MINIMUM,
    HEPTAMER_EMT_MINIMUM,
    heptamer_island,
    stepped_pt_adatom_minimum_sites,
)
from godiff_jax.ase_interop import to_atoms  # noqa: E402
from godiff_jax.potentials.emt import emt_energy_fn  # noqa: E402
from godiff_jax.relax import relax  # noqa: E402
from godiff_jax.system import pt111_heptamer, stepped_pt_adatom  # noqa: E402

FMAX = 0.01


def _ase_relax(system, x0):
    atoms = to_atoms(system, x0)
    atoms.calc = EMT()
    opt = BFGS(atoms, logfile=None)
    opt.run(fmax=FMAX, steps=2000)
    return atoms.get_potential_energy(), opt.nsteps


def main() -> None:
    rng = np.random.default_rng(0)
    hept, adatom = pt111_heptamer(), stepped_pt_adatom()
    cases = [
        ("Pt7 hcp island", hept, heptamer_island(hept, "hcp"), HEPTAMER_EMT_MINIMUM),
        ("Pt7 fcc island", hept, heptamer_island(hept, "fcc"), HEPTAMER_EMT_MINIMUM),
        ("Pt adatom, min site", adatom, stepped_pt_adatom_minimum_sites()[:1], ADATOM_EMT_MINIMUM),
    ]
    energy_fns = {id(hept): emt_energy_fn(hept), id(adatom): emt_energy_fn(adatom)}
    header = (
        f"{'structure':<22}{'ours E (eV)':>14}{'steps':>7}{'ASE E (eV)':>14}{'steps':>7}"
        f"{'ours-ASE':>11}{'E-E_ref':>11}"
    )
    print(f"relaxed to fmax {FMAX} eV/Å, template rigid; E_ref from DESIGN.md section 2")
    print(header)
    for name, system, x, e_ref in cases:
        x0 = x + 0.02 * rng.normal(size=x.shape)
        t0 = time.perf_counter()
        res = relax(energy_fns[id(system)], x0, fmax=FMAX)
        e_ours = float(res.energy)
        t_ours = time.perf_counter() - t0
        e_ase, n_ase = _ase_relax(system, x0)
        print(
            f"{name:<22}{e_ours:>14.5f}{int(res.n_steps):>7d}{e_ase:>14.5f}{n_ase:>7d}"
            f"{e_ours - e_ase:>+11.5f}{e_ours - e_ref:>+11.5f}"
            f"   (ours {t_ours:.1f} s incl. compile)"
        )


if __name__ == "__main__":
    main()
