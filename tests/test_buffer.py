from pathlib import Path

import ase.io
import jax
import jax.numpy as jnp
import numpy as np

from godiff_jax.buffer import (
    Buffer,
    add_to_archive,
    init_archive,
    polish_buffer,
    select_buffer,
    weighted_sample_without_replacement,
)
from godiff_jax.loss import boltzmann_weights
from godiff_jax.potentials.emt import emt_energy_fn
from godiff_jax.system import pt111_heptamer

DATA = Path(__file__).parent / "data"


def test_archive_appends_and_masks_invalid():
    a = init_archive(6, 2, jnp.float64)
    pos = jnp.arange(3 * 2 * 3, dtype=jnp.float64).reshape(3, 2, 3)
    a = add_to_archive(
        a,
        pos,
        jnp.array([1.0, jnp.nan, 3.0]),
        jnp.ones((3, 2, 3)),
        jnp.array([True, True, False]),
        0,
    )
    a = add_to_archive(
        a, pos + 100, jnp.array([4.0, 5.0, 6.0]), jnp.ones((3, 2, 3)), jnp.ones(3, bool), 1
    )
    assert int(a.count) == 6
    np.testing.assert_array_equal(a.valid, [True, False, False, True, True, True])
    np.testing.assert_array_equal(a.iteration, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(a.positions[3:], pos + 100)
    assert np.isnan(a.energies[1]) and np.isnan(a.energies[2])
    np.testing.assert_array_equal(a.forces[1], 0.0)


def test_efraimidis_spirakis_inclusion_frequencies():
    """Sampling k=1 must pick i with probability w_i / sum(w); k=2 by the ES formula."""
    e = jnp.array([0.0, 0.5, 1.0, jnp.nan])
    valid = jnp.isfinite(e)
    kT = 1.0
    keys = jax.random.split(jax.random.PRNGKey(0), 40000)
    idx1, _ = jax.vmap(lambda k: weighted_sample_without_replacement(k, e, valid, kT, 1))(keys)
    p = np.exp(-np.array([0.0, 0.5, 1.0]))
    p /= p.sum()
    freq = np.bincount(np.asarray(idx1[:, 0]), minlength=4) / len(keys)
    np.testing.assert_allclose(freq[:3], p, atol=0.01)
    assert freq[3] == 0
    # k = 2: P(i in sample) = p_i + sum_{j != i} p_j p_i / (1 - p_j)
    idx2, sel_valid = jax.vmap(lambda k: weighted_sample_without_replacement(k, e, valid, kT, 2))(
        keys
    )
    assert bool(jnp.all(sel_valid))
    incl = np.array([np.mean(np.any(np.asarray(idx2) == i, axis=1)) for i in range(3)])
    expect = np.array(
        [p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(3) if j != i) for i in range(3)]
    )
    np.testing.assert_allclose(incl, expect, atol=0.01)


def test_low_kT_does_not_underflow_and_invalid_go_last():
    e = jnp.array([100.0, 0.0, 50.0, jnp.nan, 1.0])
    idx, valid = weighted_sample_without_replacement(
        jax.random.PRNGKey(1), e, jnp.isfinite(e), 1e-3, 5
    )
    assert list(np.asarray(idx[:2])) == [1, 4]
    np.testing.assert_array_equal(valid, [True, True, True, True, False])
    assert int(idx[-1]) == 3


def test_select_buffer_weights_recomputed_over_buffer():
    a = init_archive(8, 1, jnp.float64)
    e = jnp.array([3.0, 1.0, 2.0, 0.5, 7.0, 0.1, 9.0, 4.0])
    a = add_to_archive(a, jnp.zeros((8, 1, 3)), e, jnp.zeros((8, 1, 3)), jnp.ones(8, bool), 0)
    b = select_buffer(jax.random.PRNGKey(2), a, 0.5, 4)
    assert b.positions.shape == (4, 1, 3)
    np.testing.assert_allclose(b.energies, e[b.index])
    np.testing.assert_allclose(b.weights, boltzmann_weights(e[b.index], 0.5), rtol=1e-12)
    np.testing.assert_allclose(np.sum(b.weights), 4.0)
    assert len(set(np.asarray(b.index).tolist())) == 4


def _buffer(positions, forces, valid):
    k = positions.shape[0]
    return Buffer(
        positions=jnp.asarray(positions, jnp.float32),
        energies=jnp.zeros(k),
        forces=jnp.asarray(forces, jnp.float32),
        weights=jnp.ones(k),
        valid=jnp.asarray(valid),
        index=jnp.arange(k, dtype=jnp.int32),
    )


def test_polish_moves_along_the_forces_clipped_and_confined():
    system = pt111_heptamer()
    z_mid = 0.5 * (system.box_lo[2] + system.box_hi[2])
    x = np.zeros((3, 7, 3))
    x[..., 0] = np.arange(7) * 2.0 + 3.0  # inside the oblique cell: no wrap
    x[..., 1] = 2.0
    x[..., 2] = z_mid
    f = np.zeros((3, 7, 3))
    f[:, 0] = [1.4, 0.0, 0.0]  # step 0.02 Å: kept as it is
    f[:, 1] = [0.0, 70.0, 0.0]  # step 1 Å: clipped to 0.1 Å
    f[:, 2] = [0.0, 0.0, 1e4]  # clipped to 0.1 Å, still inside the box in z
    f[2] = 50.0  # the invalid structure does not move
    b = polish_buffer(system, _buffer(x, f, [True, True, False]), 1.0 / 70.0, 0.1)
    moved = np.asarray(b.positions) - x.astype(np.float32)
    np.testing.assert_allclose(moved[:2, 0], [[0.02, 0, 0]] * 2, atol=1e-6)
    np.testing.assert_allclose(moved[:2, 1], [[0, 0.1, 0]] * 2, atol=1e-6)
    np.testing.assert_allclose(moved[:2, 2], [[0, 0, 0.1]] * 2, atol=1e-6)
    np.testing.assert_allclose(moved[:2, 3:], 0.0, atol=2e-6)  # the wrap's float32 rounding
    np.testing.assert_array_equal(moved[2], 0.0)
    top = polish_buffer(system, _buffer(x + [0, 0, 2.49], f, [True] * 3), 1.0, 0.1)
    assert np.all(np.asarray(top.positions)[..., 2] <= system.box_hi[2] + 1e-5)  # clamped


def test_polish_lowers_the_emt_energy_of_rattled_heptamers():
    """One step of 0.05 Å^2/eV down the EMT forces (what every evaluation returns) brings
    rattled minima most of the way back: the single points lose most of their excess
    (1/70, ASE's initial inverse curvature, is too timid: a third; 0.1 overshoots)."""
    system = pt111_heptamer()
    energy = jax.jit(jax.vmap(emt_energy_fn(system)))
    forces = jax.jit(jax.vmap(jax.grad(lambda x: -emt_energy_fn(system)(x))))
    x_min = np.asarray(ase.io.read(DATA / "pt7_pt111_emt_minimum.extxyz").positions[-7:])
    x = x_min + 0.05 * np.random.default_rng(0).standard_normal((16, 7, 3))
    x = jnp.asarray(x, jnp.float32)
    e_min = float(energy(jnp.asarray(x_min[None], jnp.float32))[0])
    e0 = np.asarray(energy(x)) - e_min
    b = polish_buffer(system, _buffer(x, forces(x), [True] * 16), 0.05, 0.1)
    e1 = np.asarray(energy(b.positions)) - e_min
    assert np.all(e1 < e0)
    assert np.median(e1 / e0) < 0.4, np.median(e1 / e0)
