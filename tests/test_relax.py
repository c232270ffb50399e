"""FIRE relaxation in JAX: ASE's FIRE step for step, EMT minima, vmap, confinement."""

from pathlib import Path

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.optimize import BFGS, FIRE

from godiff_jax.analysis import HEPTAMER_EMT_MINIMUM
from godiff_jax.ase_interop import EMTCalculator, to_atoms
from godiff_jax.potentials.emt import emt_energy_fn
from godiff_jax.relax import relax, relax_batch
from godiff_jax.system import pt111_heptamer, stepped_pt_adatom

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def heptamer():
    system = pt111_heptamer()
    x = np.asarray(ase.io.read(DATA / "pt7_pt111_emt_minimum.extxyz").positions[-7:])
    return system, emt_energy_fn(system), x


def test_heptamer_minimum_relaxes_to_reference_and_matches_ase_bfgs(heptamer):
    system, energy_fn, x_min = heptamer
    x0 = x_min + 0.03 * np.random.default_rng(0).normal(size=x_min.shape)
    res = relax(energy_fn, x0, fmax=0.01)
    assert bool(res.converged) and float(res.fmax) < 0.01
    assert 0 < int(res.n_steps) < 2000
    assert float(res.energy) == pytest.approx(HEPTAMER_EMT_MINIMUM, abs=0.002)
    assert float(res.energy) == pytest.approx(float(jax.jit(energy_fn)(res.positions)), abs=1e-10)
    # ASE: BFGS with ASE's own EMT from the same start, template fixed
    atoms = to_atoms(system, x0)
    atoms.calc = EMT()
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=2000)
    assert float(res.energy) == pytest.approx(atoms.get_potential_energy(), abs=1e-3)
    np.testing.assert_allclose(atoms.positions[: system.n_template], system.template_positions)


def test_matches_ase_fire_step_for_step():
    """Same start, same forces (JAX EMT as an ASE calculator): ASE's FIRE and ours take
    the same number of steps to the same positions."""
    system = stepped_pt_adatom()
    energy_fn = emt_energy_fn(system)
    x0 = np.array([[4.0, 3.0, system.box_lo[2] + 2.0]])
    atoms = to_atoms(system, x0)
    atoms.calc = EMTCalculator()
    opt = FIRE(atoms, logfile=None)
    opt.run(fmax=0.005, steps=1000)
    res = relax(energy_fn, x0, fmax=0.005, max_steps=1000)
    assert int(res.n_steps) == opt.nsteps
    np.testing.assert_allclose(np.asarray(res.positions), atoms.positions[-1:], atol=1e-8)
    assert float(res.energy) == pytest.approx(atoms.get_potential_energy(), abs=1e-9)


def test_vmapped_relax_equals_per_structure(heptamer):
    system, energy_fn, x_min = heptamer
    rng = np.random.default_rng(1)
    xs = np.stack([x_min + s * rng.normal(size=x_min.shape) for s in (0.02, 0.05, 0.1)])
    batch = relax_batch(energy_fn, xs, fmax=0.01)
    also = jax.jit(jax.vmap(lambda x: relax(energy_fn, x, 0.01)))(jnp.asarray(xs))
    assert batch.positions.shape == (3, 7, 3) and batch.energy.shape == (3,)
    for i in range(3):
        one = relax(energy_fn, xs[i], fmax=0.01)
        assert int(batch.n_steps[i]) == int(one.n_steps)
        np.testing.assert_allclose(np.asarray(batch.positions[i]), one.positions, atol=1e-10)
        assert float(batch.energy[i]) == pytest.approx(float(one.energy), abs=1e-10)
        assert bool(batch.converged[i])
        np.testing.assert_allclose(np.asarray(also.positions[i]), one.positions, atol=1e-10)
    # structures stop at different step counts; the batch does not over-relax any of them
    assert len(set(np.asarray(batch.n_steps).tolist())) > 1


def test_max_steps_and_confine():
    system = stepped_pt_adatom()
    energy_fn = emt_energy_fn(system)
    x0 = np.array([[4.0, 3.0, system.box_hi[2]]])
    res = relax(energy_fn, x0, fmax=1e-6, max_steps=7)
    assert int(res.n_steps) == 7 and not bool(res.converged)
    assert float(res.fmax) > 1e-6
    # confinement: a start outside the cell in x/y comes back wrapped into it, z stays in
    # the box, and the energy is that of the unconfined relaxation (x/y are periodic)
    x_out = x0 + np.array([[2 * system.cell[0, 0], 0.0, 0.0]])
    res_c = relax(energy_fn, x_out, fmax=0.01, confine=system.confine)
    frac = np.linalg.solve(system.cell[:2, :2].T, np.asarray(res_c.positions)[:, :2].T).T
    assert np.all((frac >= 0) & (frac < 1))
    assert system.box_lo[2] <= float(res_c.positions[0, 2]) <= system.box_hi[2]
    res_u = relax(energy_fn, x0, fmax=0.01)
    assert float(res_c.energy) == pytest.approx(float(res_u.energy), abs=1e-6)
    # an already-converged start takes no step
    res_0 = relax(energy_fn, res_u.positions, fmax=0.01)
    assert int(res_0.n_steps) == 0
    np.testing.assert_array_equal(np.asarray(res_0.positions), np.asarray(res_u.positions))


def test_fire_init_and_step_in_a_scan_equal_relax():
    from godiff_jax.relax import energy_forces_fn, fire_init, fire_step

    system = stepped_pt_adatom()
    energy_fn = emt_energy_fn(system)
    x0 = jnp.array([[4.0, 3.0, system.box_lo[2] + 2.0]])
    n = 25
    ref = relax(energy_fn, x0, fmax=1e-9, max_steps=n)  # never converges: n steps
    ef = energy_forces_fn(energy_fn)

    @jax.jit
    def scanned(x):
        state, _ = jax.lax.scan(lambda s, _: (fire_step(s, ef), None), fire_init(ef, x), None, n)
        return state

    out = scanned(x0)
    assert int(out.step) == int(ref.n_steps) == n
    np.testing.assert_array_equal(np.asarray(out.x), np.asarray(ref.positions))
    np.testing.assert_array_equal(np.asarray(out.energy), np.asarray(ref.energy))
