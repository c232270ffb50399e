"""Random mace-torch models of the MACE-MP-0 architectures, and their energies and forces.

    python tests/data/mace/make_fixtures.py        # needs the `mace` extra (torch, mace-torch)

writes, for small and medium: `{arch}.mace` (the model converted with
`godiff_jax.potentials.mace.convert`, the same code as `godiff convert-mace`) and
`{arch}.npz` (the test structures and mace-torch's float64 energies and forces on them).
The committed fixtures shrink the channel counts (8 instead of 128) and the radial MLP
width (16 instead of 64) so that they stay small; every architectural feature is kept:
ScaleShiftMACE, RealAgnosticResidualInteractionBlock, 2 interactions, correlation 3,
max_ell 3, r_max 6 Å, 10 Bessel functions with a p=5 polynomial cutoff, a 3-layer
radial MLP, a 16x0e readout MLP on the last layer, per-element E0s, scale and shift.
`tests/test_mace.py` imports `build_model` and `structures` for its live tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import fcc111, fcc211, molecule

HERE = Path(__file__).resolve().parent
ELEMENTS = [1, 6, 8, 78]  # H C O Pt
E0 = [-1.1, -7.3, -4.9, -6.0]  # eV, per element
HIDDEN = {"small": "{c}x0e", "medium": "{c}x0e+{c}x1o", "large": "{c}x0e+{c}x1o+{c}x2e"}
FIXTURE = {"channels": 8, "radial": 16, "seed": 0}
LIVE_SEED = 1  # the live tests' MP-0-size models
FIXTURE_ARCHS = ("small", "medium")  # large runs in the live tests only


def build_model(arch: str, channels: int = 128, radial: int = 64, seed: int = LIVE_SEED):
    """A float64 ScaleShiftMACE of the MP-0 `arch` with random weights of O(1) scale.

    Random per-atom energies of either sign can cancel in a total: the seeds (FIXTURE,
    LIVE_SEED) and the scale of 10 are ones for which every test structure has an
    interaction energy of at least 1 eV (the tests assert it).
    """
    import mace  # noqa: F401  (mace sets up e3nn's torch loading before e3nn is imported)
    import torch
    from e3nn import o3
    from mace import modules

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(seed)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        r_max=6.0,
        num_bessel=10,
        num_polynomial_cutoff=5,
        max_ell=3,
        interaction_cls=block,
        interaction_cls_first=block,
        num_interactions=2,
        num_elements=len(ELEMENTS),
        hidden_irreps=o3.Irreps(HIDDEN[arch].format(c=channels)),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.array(E0),
        avg_num_neighbors=12.0,
        atomic_numbers=ELEMENTS,
        correlation=3,
        gate=torch.nn.functional.silu,
        radial_MLP=[radial, radial, radial],
        atomic_inter_scale=10.0,
        atomic_inter_shift=0.05,
        use_reduced_cg=False,  # the U tensors of the 2023 MP-0 models
    )
    # e3nn weights start as N(0, 1) already (O(1) after its normalisation); the product
    # basis weights start at 1/K: raise them to O(1) so the correlation-3 terms matter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "symmetric_contractions" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    return model.eval()


def structures() -> dict[str, Atoms]:
    """The test structures: a Pt(111) slab with adatoms, a stepped Pt surface with an
    adatom, a mixed-element molecule with a Pt atom in a periodic box."""
    slab = fcc111("Pt", size=(3, 3, 2), vacuum=6.0)
    top = slab.positions[:, 2].max()
    slab += Atoms("Pt2", positions=[[1.4, 0.8, top + 2.2], [4.1, 2.3, top + 2.4]])
    step = fcc211("Pt", size=(3, 2, 2), vacuum=6.0)
    top = step.positions[:, 2].max()
    step += Atoms("Pt", positions=[[2.0, 1.5, top + 1.9]])
    mol = molecule("CH3OH")
    mol += Atoms("Pt", positions=[[0.3, 2.1, 0.4]])
    mol.cell = np.diag([8.0, 8.5, 9.0])
    mol.pbc = True
    mol.positions += [3.0, 3.2, 3.5]
    rng = np.random.default_rng(1)
    for atoms in (slab, step, mol):
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)  # off symmetry
    return {"slab_adatoms": slab, "stepped": step, "molecule_box": mol}


def torch_energy_forces(model, atoms: Atoms) -> tuple[float, np.ndarray, float]:
    """mace-torch's float64 (energy, forces, interaction energy) of `atoms`."""
    from mace.calculators import MACECalculator

    calc = MACECalculator(models=model, device="cpu", default_dtype="float64")
    atoms = atoms.copy()
    atoms.calc = calc
    e = float(atoms.get_potential_energy())
    f = np.asarray(atoms.get_forces(), float)
    e0 = dict(zip(ELEMENTS, E0, strict=True))
    return e, f, e - sum(e0[int(z)] for z in atoms.numbers)


def main() -> None:
    sys.path.insert(0, str(HERE.parents[2]))
    from godiff_jax.potentials.mace.convert import from_torch
    from godiff_jax.potentials.mace.model_file import save_mace

    for arch in FIXTURE_ARCHS:
        model = build_model(arch, FIXTURE["channels"], FIXTURE["radial"], FIXTURE["seed"])
        save_mace(HERE / f"{arch}.mace", from_torch(model))
        data = {}
        for name, atoms in structures().items():
            e, f, inter = torch_energy_forces(model, atoms)
            data[f"{name}.energy"] = np.array(e)
            data[f"{name}.forces"] = f
            print(f"{arch:7s} {name:13s} E = {e:12.6f} eV, interaction {inter:10.4f} eV")
        np.savez(HERE / f"{arch}.npz", **data)


if __name__ == "__main__":
    main()
