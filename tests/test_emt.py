"""JAX EMT vs ase.calculators.emt.EMT in float64: energies (eV) and forces (eV/Å)."""

import functools

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk, fcc111, molecule
from ase.calculators.emt import EMT

from godiff_jax import (
    make_cluster_system,
    make_surface_system,
    pt111_heptamer,
    stepped_pt_adatom,
)
from godiff_jax.potentials.emt import (
    SUPPORTED_ELEMENTS,
    emt_energy_fn,
    make_emt_energy,
)

TOL = 1e-8


def ase_emt(atoms: ase.Atoms, **kwargs) -> tuple[float, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = EMT(**kwargs)
    return atoms.get_potential_energy(), atoms.get_forces()


def check_generic(atoms: ase.Atoms, **kwargs) -> None:
    e_ref, f_ref = ase_emt(atoms, **kwargs)
    fn = make_emt_energy(atoms.numbers, atoms.cell.array, atoms.pbc, **kwargs)
    e, g = jax.jit(jax.value_and_grad(fn))(jnp.asarray(atoms.positions))
    assert abs(float(e) - e_ref) < TOL, (float(e), e_ref)
    np.testing.assert_allclose(-np.asarray(g), f_ref, rtol=0, atol=TOL)


def system_atoms(system, mobile: np.ndarray) -> ase.Atoms:
    return ase.Atoms(
        numbers=system.numbers,
        positions=np.concatenate([system.template_positions, mobile]),
        cell=system.cell,
        pbc=system.pbc,
    )


def random_mobile(system, rng) -> np.ndarray:
    """Uniform in the box (x/y uniform over the cell in surface mode)."""
    m = system.n_mobile
    if system.mode == "cluster":
        return rng.uniform(system.box_lo, system.box_hi, (m, 3))
    xy = rng.random((m, 2)) @ system.cell[:2, :2]
    z = rng.uniform(system.box_lo[2], system.box_hi[2], (m, 1))
    return np.concatenate([xy, z], axis=1)


@functools.cache
def heptamer():
    return pt111_heptamer()


@functools.cache
def fast_value_and_grad(system):
    """Jitted once per system and shared between tests: compiling dominates runtime."""
    return jax.jit(jax.value_and_grad(emt_energy_fn(system)))


@functools.cache
def fast_batched(system):
    return jax.jit(jax.vmap(jax.value_and_grad(emt_energy_fn(system))))


def check_fast(system, mobiles: list[np.ndarray]) -> None:
    fn = fast_value_and_grad(system)
    for mobile in mobiles:
        e_ref, f_ref = ase_emt(system_atoms(system, mobile))
        e, g = fn(jnp.asarray(mobile))
        assert abs(float(e) - e_ref) < TOL, (float(e), e_ref)
        np.testing.assert_allclose(-np.asarray(g), f_ref[system.n_template :], rtol=0, atol=TOL)


def fcc_cell(symbol: str, a: float, rng, rattle: float = 0.1) -> ase.Atoms:
    atoms = bulk(symbol, "fcc", a=a, cubic=True)
    atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
    return atoms


# ---------------------------------------------------------------------------- fast path


def test_heptamer_fast_path_random_adatoms():
    system = heptamer()
    rng = np.random.default_rng(0)
    mobiles = [random_mobile(system, rng) for _ in range(3)]
    # A compact cluster near a hollow site, where the energy is near its minimum.
    mobile = system.template_positions[-7:] + np.array([1.4, 0.8, 2.3])
    check_fast(system, [*mobiles, mobile + rng.normal(0.0, 0.05, mobile.shape)])


def test_heptamer_generic_matches_ase():
    system = heptamer()
    rng = np.random.default_rng(1)
    check_generic(system_atoms(system, random_mobile(system, rng)))


def test_stepped_adatom_fast_and_generic():
    system = stepped_pt_adatom()
    assert system.cell[1, 1] < 2 * 5.88  # narrower than twice the list cutoff
    rng = np.random.default_rng(2)
    mobiles = [random_mobile(system, rng) for _ in range(3)]
    check_fast(system, mobiles)
    check_generic(system_atoms(system, mobiles[0]))


def test_mixed_cluster_system_fast_path():
    system = make_cluster_system("Au2Cu2", 6.0)
    rng = np.random.default_rng(3)
    check_fast(system, [random_mobile(system, rng) for _ in range(3)])


def test_mixed_surface_system_fast_path():
    slab = fcc111("Cu", (3, 3, 3), vacuum=8.0)
    slab.numbers[[2, 5, 13, 22, 26]] = [79, 78, 28, 79, 46]  # Au Pt Ni Au Pd
    slab.positions[:, 2] -= slab.positions[:, 2].min()
    system = make_surface_system(slab, "AuPtO", (0.5, 4.0))
    rng = np.random.default_rng(4)
    check_fast(system, [random_mobile(system, rng) for _ in range(3)])


def test_isolated_template_atom_fast_path():
    # A template atom with no template neighbour: its embedding comes from mobile atoms.
    lone = ase.Atoms("Au", positions=[[0.0, 0.0, 0.0]])
    system = make_cluster_system("Pt3", 4.0, template=lone)
    rng = np.random.default_rng(5)
    # second: no mobile atom within the cutoff of the template atom
    far = system.box_lo + np.array([[9.0, 9.0, 9.0], [7.0, 9.0, 9.0], [9.0, 7.0, 9.0]])
    check_fast(system, [random_mobile(system, rng), far])


def test_vmap_batch_matches_single():
    system = heptamer()
    rng = np.random.default_rng(6)
    batch = np.stack([random_mobile(system, rng) for _ in range(8)])
    e_b, g_b = fast_batched(system)(jnp.asarray(batch))
    single = fast_value_and_grad(system)
    for i in range(len(batch)):
        e, g = single(jnp.asarray(batch[i]))
        assert abs(float(e_b[i]) - float(e)) < 1e-10
        np.testing.assert_allclose(np.asarray(g_b[i]), np.asarray(g), rtol=0, atol=1e-10)
    e_ref, _ = ase_emt(system_atoms(system, batch[3]))
    assert abs(float(e_b[3]) - e_ref) < TOL


def test_float32_is_sane():
    system = heptamer()
    rng = np.random.default_rng(7)
    batch = np.stack([random_mobile(system, rng) for _ in range(8)])  # shape shared
    fn = fast_batched(system)
    e64, g64 = fn(jnp.asarray(batch, jnp.float64))
    e32, g32 = fn(jnp.asarray(batch, jnp.float32))
    assert e32.dtype == jnp.float32 and g32.dtype == jnp.float32
    # Random structures in the box overlap (hundreds of eV): float32 rounding is relative.
    np.testing.assert_allclose(np.asarray(e32), np.asarray(e64), rtol=1e-5, atol=2e-4)
    np.testing.assert_allclose(np.asarray(g32), np.asarray(g64), rtol=1e-4, atol=2e-4)


def test_wrapping_by_lattice_vectors_is_invariant():
    system = heptamer()
    rng = np.random.default_rng(8)
    mobile = random_mobile(system, rng)
    fn = fast_value_and_grad(system)
    e0, g0 = fn(jnp.asarray(mobile))
    shifted = mobile + np.array([2, -1, 0]) @ system.cell + np.array([-1, 0, 0]) @ system.cell
    e1, g1 = fn(jnp.asarray(shifted))
    assert abs(float(e1) - float(e0)) < 1e-9
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g0), atol=1e-9)


# ---------------------------------------------------------------------------- generic


def test_gas_phase_cluster():
    rng = np.random.default_rng(9)
    atoms = ase.Atoms("Pt13", positions=rng.uniform(0.0, 6.0, (13, 3)))
    check_generic(atoms)
    atoms = ase.Atoms("Cu4Au3", positions=rng.uniform(0.0, 5.0, (7, 3)))
    check_generic(atoms)


@pytest.mark.parametrize("symbol", SUPPORTED_ELEMENTS)
def test_each_element_periodic_bulk(symbol):
    from godiff_jax.potentials.emt import _PARAMETERS

    s0 = _PARAMETERS[symbol][1] * ase.units.Bohr
    a = 1.809 * s0 * np.sqrt(2.0) * 1.02  # near the element's EMT fcc lattice constant
    check_generic(fcc_cell(symbol, a, np.random.default_rng(10)))


@pytest.mark.parametrize("name", ["H2O", "NH3", "CH4", "CO2"])
def test_light_element_molecules(name):
    atoms = molecule(name)
    atoms.positions += np.random.default_rng(11).normal(0.0, 0.05, atoms.positions.shape)
    check_generic(atoms)


def test_mixed_species_periodic():
    rng = np.random.default_rng(12)
    atoms = fcc_cell("Cu", 3.8, rng) * (2, 1, 1)
    atoms.numbers[:] = [29, 79, 78, 28, 8, 79, 29, 78]  # Cu Au Pt Ni O Au Cu Pt
    check_generic(atoms)
    check_generic(atoms, asap_cutoff=True)  # cutoff from the largest atom present


def test_asap_cutoff_depends_on_present_elements():
    rng = np.random.default_rng(13)
    atoms = ase.Atoms("Ni3Cu2", positions=rng.uniform(0.0, 4.5, (5, 3)))
    check_generic(atoms, asap_cutoff=True)


def test_cells_narrower_than_twice_the_cutoff():
    # One atom per cell: all its neighbours are its own images.
    atoms = bulk("Pt", "fcc", a=3.92)
    check_generic(atoms)
    sheared = atoms.copy()
    sheared.set_cell(atoms.cell.array @ np.array([[1.03, 0.02, 0.0], [0.0, 0.98, 0.01], [0, 0, 1]]))
    check_generic(sheared)
    rng = np.random.default_rng(14)
    two = bulk("Au", "fcc", a=4.08) * (2, 1, 1)
    two.positions += rng.normal(0.0, 0.1, two.positions.shape)
    check_generic(two)


def test_cell_wide_along_one_axis_narrow_along_others():
    # x is wider than twice the cutoff (minimum image), y and z are not (enumerated).
    rng = np.random.default_rng(16)
    atoms = fcc_cell("Cu", 3.7, rng) * (4, 1, 1)
    atoms.numbers[::3] = 79
    check_generic(atoms)


def test_mixed_pbc_wire():
    rng = np.random.default_rng(15)
    atoms = fcc_cell("Ag", 4.1, rng) * (1, 1, 2)
    atoms.center(vacuum=3.0, axis=(0, 1))
    atoms.pbc = (False, False, True)
    check_generic(atoms)


# ---------------------------------------------------------------------------- robustness


def test_gradients_finite_for_coincident_and_isolated_atoms():
    fn = make_emt_energy([78, 78, 78], None, False)
    x = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [30.0, 0.0, 0.0]])
    e, g = jax.jit(jax.value_and_grad(fn))(x)
    assert np.isfinite(float(e)) and np.all(np.isfinite(np.asarray(g)))
    # An atom with no neighbours has E = -E0 (ASE's convention), zero force.
    check_generic(ase.Atoms("Pt", positions=[[0.0, 0.0, 0.0]]))
    check_generic(ase.Atoms("Pt2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 7.0]]))


def test_unsupported_element_raises():
    with pytest.raises(ValueError, match="Fe") as err:
        make_emt_energy([26, 78], None, False)
    assert "Pt" in str(err.value) and "supported" in str(err.value)
    slab = fcc111("Pt", (2, 2, 2), vacuum=6.0)
    with pytest.raises(ValueError, match="Fe"):
        emt_energy_fn(make_surface_system(slab, "Fe", (1.0, 3.0)))
