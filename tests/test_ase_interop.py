"""System <-> ase.Atoms, JAX models as ASE calculators, batch evaluation with ASE."""

import warnings
from pathlib import Path

import ase.io
import jax
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.optimize import BFGS

from godiff_jax import ase_interop
from godiff_jax.ase_interop import (
    EMTCalculator,
    JaxCalculator,
    from_atoms,
    to_atoms,
)
from godiff_jax.evaluate import evaluate_with_calculator
from godiff_jax.system import make_cluster_system, pt111_heptamer, stepped_pt_adatom

DATA = Path(__file__).parent / "data"


def _adatom_batch(system, n, seed=0):
    rng = np.random.default_rng(seed)
    frac = rng.uniform(0, 1, size=(n, 2))
    xy = frac @ system.cell[:2, :2]
    z = rng.uniform(system.box_lo[2] + 1.0, system.box_hi[2], size=(n, 1))
    return np.concatenate([xy, z], axis=1)[:, None, :]


# ------------------------------------------------------------------ to_atoms / from_atoms


def test_to_atoms_from_atoms_round_trip(tmp_path):
    system = pt111_heptamer()
    ref = ase.io.read(DATA / "pt7_pt111_emt_minimum.extxyz")
    x = ref.positions[-7:]
    forces = np.arange(21.0).reshape(7, 3)
    atoms = to_atoms(system, x, energy=24.98, forces=forces, info={"iteration": 3})
    assert len(atoms) == 79 and atoms.get_chemical_formula() == "Pt79"
    np.testing.assert_allclose(atoms.cell.array, system.cell)
    assert tuple(atoms.pbc) == system.pbc
    (fix,) = atoms.constraints
    assert isinstance(fix, FixAtoms)
    assert sorted(fix.get_indices().tolist()) == list(range(72))
    assert atoms.get_potential_energy() == 24.98
    f = atoms.get_forces(apply_constraint=False)
    np.testing.assert_array_equal(f[:72], 0.0)
    np.testing.assert_array_equal(f[72:], forces)
    assert atoms.info["iteration"] == 3
    np.testing.assert_allclose(from_atoms(system, atoms), x)
    # the reference file (written by ASE, all-atom forces absent) reads back too
    np.testing.assert_allclose(from_atoms(system, ref), x)
    # all-atom forces pass through unchanged
    full = np.ones((79, 3))
    f2 = to_atoms(system, x, forces=full).get_forces(apply_constraint=False)
    np.testing.assert_array_equal(f2, full)
    # through an extxyz file, energy and forces included
    path = tmp_path / "out.extxyz"
    ase.io.write(path, to_atoms(system, x, energy=1.5, forces=forces))
    back = ase.io.read(path)
    assert back.get_potential_energy() == pytest.approx(1.5)
    np.testing.assert_allclose(back.get_forces(apply_constraint=False)[72:], forces)
    np.testing.assert_allclose(from_atoms(system, back), x)
    # cluster with no template
    cl = make_cluster_system("Cu3", 5.0)
    xc = np.random.default_rng(0).uniform(10, 15, size=(3, 3))
    ac = to_atoms(cl, xc)
    assert not ac.constraints and not any(ac.pbc)
    np.testing.assert_allclose(from_atoms(cl, ac), xc)


def test_to_from_atoms_errors():
    system = pt111_heptamer()
    x = ase.io.read(DATA / "pt7_pt111_emt_minimum.extxyz").positions[-7:]
    with pytest.raises(ValueError, match=r"shape \(7, 3\)"):
        to_atoms(system, x[:6])
    with pytest.raises(ValueError, match="forces"):
        to_atoms(system, x, forces=np.zeros((5, 3)))
    atoms = to_atoms(system, x)
    with pytest.raises(ValueError, match="78 atoms.*79"):
        from_atoms(system, atoms[:-1])
    wrong = atoms.copy()
    wrong.numbers[-1] = 29
    with pytest.raises(ValueError, match="species differ.*index 78"):
        from_atoms(system, wrong)
    moved = atoms.copy()
    moved.positions[5] += [0.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="template atom 5"):
        from_atoms(system, moved)
    with pytest.raises(ValueError, match="do not match"):
        from_atoms(stepped_pt_adatom(), atoms)


# ------------------------------------------------------------------ JaxCalculator


def test_emt_calculator_matches_ase_emt():
    system = stepped_pt_adatom()
    for x in _adatom_batch(system, 3):
        a_ref = to_atoms(system, x)
        a_ref.calc = EMT()
        a_jax = to_atoms(system, x)
        a_jax.calc = EMTCalculator()
        e = a_jax.get_potential_energy()
        assert isinstance(e, float)
        assert e == pytest.approx(a_ref.get_potential_energy(), abs=1e-8)
        f = a_jax.get_forces(apply_constraint=False)
        assert f.dtype == np.float64 and f.shape == (21, 3)
        np.testing.assert_allclose(f, a_ref.get_forces(apply_constraint=False), atol=1e-8)
        assert a_jax.get_potential_energy(force_consistent=True) == e
    # any atoms, e.g. a periodic bulk cell
    cu = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    cu.rattle(0.05, seed=1)
    ref = cu.copy()
    ref.calc = EMT()
    cu.calc = EMTCalculator()
    assert cu.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-8)
    np.testing.assert_allclose(cu.get_forces(), ref.get_forces(), atol=1e-8)


def test_emt_calculator_bfgs_compiles_once():
    system = stepped_pt_adatom()
    x0 = np.array([[4.0, 3.0, system.box_lo[2] + 2.0]])
    ase_interop._cache.clear()

    ref = to_atoms(system, x0)
    ref.calc = EMT()
    BFGS(ref, logfile=None).run(fmax=0.01, steps=500)

    atoms = to_atoms(system, x0)
    calc = EMTCalculator()
    atoms.calc = calc
    opt = BFGS(atoms, logfile=None)
    assert opt.run(fmax=0.01, steps=500)
    assert opt.nsteps > 3
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-5)
    assert calc.n_builds == 1 and calc.n_traces == 1
    # a second calculator on same-size atoms reuses the compiled function
    atoms2 = to_atoms(system, x0 + 0.1)
    calc2 = EMTCalculator()
    atoms2.calc = calc2
    BFGS(atoms2, logfile=None).run(fmax=0.01, steps=500)
    assert calc2.n_builds == 0 and calc2.n_traces == 0
    # a different cell is a different model: built and traced once more
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.calc = calc2
    cu.get_potential_energy()
    assert calc2.n_builds == 1 and calc2.n_traces == 1


def test_jax_calculator_generic_factory():
    import jax.numpy as jnp

    def harmonic_factory(numbers, cell, pbc):
        k = jnp.asarray(numbers, dtype=float)

        def energy(positions):
            return 0.5 * jnp.sum(k[:, None] * positions**2)

        return energy

    atoms = ase.Atoms("HHe", positions=[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    atoms.calc = JaxCalculator(harmonic_factory)
    assert atoms.get_potential_energy() == pytest.approx(0.5 * 1 + 0.5 * 2 * 4)
    np.testing.assert_allclose(atoms.get_forces(), [[-1.0, 0, 0], [0, -4.0, 0]])
    atoms.positions[0, 0] = 2.0  # new positions -> recomputed, same compiled function
    assert atoms.get_potential_energy() == pytest.approx(0.5 * 4 + 0.5 * 2 * 4)
    assert atoms.calc.n_traces == 1


# ------------------------------------------------------------------ evaluate_with_calculator


class FlakyEMT(EMT):
    """EMT that raises for some adatom positions and returns NaN for others."""

    def __init__(self, raise_at, nan_at, **kwargs):
        super().__init__(**kwargs)
        self.raise_at = [np.asarray(p) for p in raise_at]
        self.nan_at = [np.asarray(p) for p in nan_at]

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        mobile = atoms.positions[-1]
        if any(np.allclose(mobile, p) for p in self.raise_at):
            raise RuntimeError("SCF did not converge")
        super().calculate(atoms, properties, system_changes)
        if any(np.allclose(mobile, p) for p in self.nan_at):
            self.results["energy"] = float("nan")


def test_evaluate_with_calculator_marks_failures_invalid():
    system = stepped_pt_adatom()
    xs = _adatom_batch(system, 7, seed=3)
    calc = FlakyEMT(raise_at=[xs[1, 0], xs[4, 0]], nan_at=[xs[5, 0]])
    with pytest.warns(RuntimeWarning, match=r"3 of 7 structures failed.*SCF did not converge"):
        energies, forces, valid = evaluate_with_calculator(system, xs, calc)
    assert valid.tolist() == [True, False, True, True, False, False, True]
    assert energies.shape == (7,) and forces.shape == (7, 1, 3)
    assert np.all(np.isnan(energies[~valid])) and np.all(forces[~valid] == 0.0)
    ref_e, ref_f, ref_valid = evaluate_with_calculator(system, xs, EMT())
    assert ref_valid.all()
    np.testing.assert_allclose(energies[valid], ref_e[valid], atol=1e-12)
    np.testing.assert_allclose(forces[valid], ref_f[valid], atol=1e-12)
    for i in np.flatnonzero(valid):
        atoms = to_atoms(system, xs[i])
        atoms.calc = EMT()
        assert energies[i] == pytest.approx(atoms.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(forces[i], atoms.get_forces()[-1:], atol=1e-12)
    # our JAX EMT through the same path agrees with ASE's
    e_jax, f_jax, v_jax = evaluate_with_calculator(system, xs, EMTCalculator())
    assert v_jax.all()
    np.testing.assert_allclose(e_jax, ref_e, atol=1e-8)
    np.testing.assert_allclose(f_jax, ref_f, atol=1e-8)


def test_evaluate_with_calculator_no_warning_and_single_structure():
    system = stepped_pt_adatom()
    xs = _adatom_batch(system, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e, f, v = evaluate_with_calculator(system, xs[0], EMT())
    assert e.shape == (1,) and f.shape == (1, 1, 3) and v.tolist() == [True]
    with pytest.raises(ValueError, match="shape"):
        evaluate_with_calculator(system, np.zeros((2, 3, 3)), EMT())


def test_evaluate_with_calculator_process_pool():
    system = stepped_pt_adatom()
    xs = _adatom_batch(system, 5, seed=7)
    serial = evaluate_with_calculator(system, xs, EMT())
    pooled = evaluate_with_calculator(system, xs, EMT(), n_workers=2)
    for a, b in zip(serial, pooled, strict=True):
        np.testing.assert_array_equal(a, b)


def test_emt_calculator_is_float64_with_x64_off():
    """A drop-in for EMT(): double precision even in a process without jax_enable_x64."""
    from ase.build import fcc111
    from ase.calculators.emt import EMT

    from godiff_jax.ase_interop import EMTCalculator

    atoms = fcc111("Pt", (2, 2, 3), vacuum=6.0)
    atoms.rattle(0.05, seed=1)
    ref = atoms.copy()
    ref.calc = EMT()
    with jax.enable_x64(False):
        atoms.calc = EMTCalculator()
        e = atoms.get_potential_energy()
        f = atoms.get_forces()
    assert abs(e - ref.get_potential_energy()) < 1e-8
    np.testing.assert_allclose(f, ref.get_forces(), atol=1e-8)
