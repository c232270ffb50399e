"""JAX Lennard-Jones vs ase.calculators.lj.LennardJones (smooth=False) in float64."""

import ase
import jax
import jax.numpy as jnp
import numpy as np
from ase.build import bulk
from ase.calculators.lj import LennardJones

from godiff_jax import make_cluster_system, pt111_heptamer, stepped_pt_adatom
from godiff_jax.potentials.lj import lj_energy_fn, make_lj_energy

TOL = 1e-8


def ase_lj(atoms, epsilon, sigma, cutoff):
    atoms = atoms.copy()
    atoms.calc = LennardJones(epsilon=epsilon, sigma=sigma, rc=cutoff, smooth=False)
    return atoms.get_potential_energy(), atoms.get_forces()


def check_generic(atoms, epsilon=1.0, sigma=1.0, cutoff=None):
    e_ref, f_ref = ase_lj(atoms, epsilon, sigma, 3.0 * sigma if cutoff is None else cutoff)
    fn = make_lj_energy(atoms.numbers, atoms.cell.array, atoms.pbc, epsilon, sigma, cutoff)
    e, g = jax.jit(jax.value_and_grad(fn))(jnp.asarray(atoms.positions))
    assert abs(float(e) - e_ref) < TOL * max(1.0, abs(e_ref)), (float(e), e_ref)
    np.testing.assert_allclose(-np.asarray(g), f_ref, rtol=1e-10, atol=TOL)


def check_fast(system, mobiles, epsilon, sigma, cutoff=None):
    fn = jax.jit(jax.value_and_grad(lj_energy_fn(system, epsilon, sigma, cutoff)))
    for mobile in mobiles:
        atoms = ase.Atoms(
            numbers=system.numbers,
            positions=np.concatenate([system.template_positions, mobile]),
            cell=system.cell,
            pbc=system.pbc,
        )
        e_ref, f_ref = ase_lj(atoms, epsilon, sigma, 3.0 * sigma if cutoff is None else cutoff)
        e, g = fn(jnp.asarray(mobile))
        assert abs(float(e) - e_ref) < TOL, (float(e), e_ref)
        np.testing.assert_allclose(-np.asarray(g), f_ref[system.n_template :], atol=TOL)


def surface_mobile(system, rng, lift=2.0):
    xy = rng.random((system.n_mobile, 2)) @ system.cell[:2, :2]
    z = rng.uniform(system.box_lo[2] + lift, system.box_hi[2], (system.n_mobile, 1))
    return np.concatenate([xy, z], axis=1)


def test_cluster_matches_ase():
    rng = np.random.default_rng(0)
    # Spread-out points so no pair sits deep in the repulsive wall.
    pos = np.stack(np.meshgrid(*[np.arange(3.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    atoms = ase.Atoms("Ar27", positions=1.1 * pos + rng.normal(0.0, 0.05, pos.shape))
    check_generic(atoms)
    check_generic(atoms, epsilon=0.0104, sigma=3.4, cutoff=8.5)


def test_periodic_narrow_cell_matches_ase():
    rng = np.random.default_rng(1)
    atoms = bulk("Ar", "fcc", a=1.55) * (2, 1, 1)  # cell far narrower than 2 x cutoff
    atoms.positions += rng.normal(0.0, 0.03, atoms.positions.shape)
    check_generic(atoms)
    check_generic(atoms, cutoff=2.0)


def test_mixed_pbc_slab_matches_ase():
    rng = np.random.default_rng(2)
    atoms = bulk("Ar", "fcc", a=1.6, cubic=True) * (2, 2, 2)
    atoms.positions += rng.normal(0.0, 0.03, atoms.positions.shape)
    atoms.pbc = (True, True, False)
    check_generic(atoms, epsilon=2.0)


def test_fast_path_builtin_systems():
    rng = np.random.default_rng(3)
    # Pt-like length scale; cutoff 3 sigma = 7.5 Å exceeds half the stepped cell's width.
    for system in (pt111_heptamer(), stepped_pt_adatom()):
        mobiles = [surface_mobile(system, rng) for _ in range(2)]
        check_fast(system, mobiles, epsilon=0.1, sigma=2.5)
    # cutoff < half the heptamer cell's width: mobile pairs use the minimum image
    system = pt111_heptamer()
    check_fast(system, [surface_mobile(system, rng)], epsilon=0.1, sigma=2.2, cutoff=5.5)


def test_fast_path_cluster_system():
    system = make_cluster_system("Ar5", 4.0)
    rng = np.random.default_rng(4)
    mobiles = [rng.uniform(system.box_lo, system.box_hi, (5, 3)) for _ in range(2)]
    check_fast(system, mobiles, epsilon=1.0, sigma=1.2, cutoff=3.0)


def test_zero_at_cutoff_and_vmap():
    fn = make_lj_energy([18, 18], epsilon=1.0, sigma=1.0, cutoff=2.5)
    at = jnp.array([[0.0, 0.0, 0.0], [2.5 - 1e-12, 0.0, 0.0]])
    assert abs(float(fn(at))) < 1e-9
    assert float(fn(at.at[1, 0].set(2.6))) == 0.0
    batch = jnp.array([[[0.0, 0.0, 0.0], [d, 0.0, 0.0]] for d in (1.0, 1.12, 1.5, 3.0)])
    e = jax.jit(jax.vmap(fn))(batch)
    single = [float(fn(b)) for b in batch]
    np.testing.assert_allclose(np.asarray(e), single, atol=1e-12)
