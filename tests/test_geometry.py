"""Periodic geometry, held to jax-md's spaces where they apply and to brute force where not."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_md import space

from godiff_jax import make_cluster_system, pt111_heptamer, stepped_pt_adatom
from godiff_jax.geometry import (
    PeriodicImages,
    confine,
    displacement_fn,
    image_shifts,
    integer_shifts,
    lattice_heights,
    minimum_image,
    periodic_axes,
)


def test_minimum_image_equals_jax_md_periodic_general_on_a_skewed_bulk_cell():
    cell = np.array([[6.0, 0.0, 0.0], [2.5, 5.5, 0.0], [1.0, 1.5, 7.0]])
    rng = np.random.default_rng(0)
    frac = rng.uniform(0.0, 1.0, (40, 3))
    pos = frac @ cell
    ours = minimum_image(jnp.asarray(pos[:20] - pos[20:]), cell, np.ones(3, bool))
    # jax-md: fractional coordinates in [0, 1), box = cell.T (column vectors)
    disp, _ = space.periodic_general(jnp.asarray(cell.T), fractional_coordinates=True)
    theirs = jax.vmap(disp)(jnp.asarray(frac[:20]), jnp.asarray(frac[20:]))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-10)


def test_cluster_displacement_is_jax_md_free_space():
    system = make_cluster_system("Pt3", 5.0)
    ra, rb = jnp.array([1.0, 2.0, 3.0]), jnp.array([4.0, -1.0, 0.5])
    np.testing.assert_array_equal(displacement_fn(system)(ra, rb), space.free()[0](ra, rb))
    assert not periodic_axes(system).any()


def test_surface_displacement_wraps_xy_only():
    system = pt111_heptamer()
    assert periodic_axes(system).tolist() == [True, True, False]
    a, b = system.cell[0], system.cell[1]
    ra = jnp.array([1.0, 1.0, 15.0])
    rb = ra + 2 * a - b + jnp.array([0.3, -0.2, 4.0])  # images in x/y, a real 4 Å in z
    d = np.asarray(displacement_fn(system)(ra, rb))
    np.testing.assert_allclose(d, [-0.3, 0.2, -4.0], atol=1e-5)


def test_shifts_are_ordered_and_complete():
    n = integer_shifts([1, 2, 0])
    assert n.shape == (15, 3) and (n[0] == 0).all()
    assert len({tuple(r) for r in n}) == 15
    assert np.all(np.diff(np.abs(n).sum(1)) >= 0)  # by |n|_1, zero first
    cell = np.diag([2.0, 3.0, 4.0])
    np.testing.assert_array_equal(
        image_shifts(cell, np.array([True, True, False]), np.array([1, 2, 5])), n @ cell
    )
    np.testing.assert_allclose(lattice_heights(cell), [2.0, 3.0, 4.0])


def test_periodic_images_reach_own_images_in_a_narrow_cell():
    # The adatom's cell (plane spacings 8.3 and 5.3 Å) is narrower than twice the 6 Å
    # cutoff: one minimum image is not enough, an atom sees its own images.
    system = stepped_pt_adatom()
    images = PeriodicImages(system.cell, system.pbc, 6.0)
    narrow = int(np.argmin(images.heights))
    np.testing.assert_allclose(images.heights[:2], [8.3156, 5.2592], atol=1e-3)
    assert images.n_max[narrow] == 2 and not images.wide[:2].any()
    x = jnp.array([[1.0, 1.0, system.box_lo[2] + 1.0]])
    d = np.linalg.norm(np.asarray(images.pair_vectors(x))[0, 0], axis=-1)
    own = np.sort(d[d > 1e-9])
    # its own images one short cell vector away on both sides, inside the cutoff
    np.testing.assert_allclose(own[:2], np.linalg.norm(system.cell[narrow]), rtol=1e-6)
    assert own[1] < 6.0


def test_confine_wraps_and_clamps():
    system = pt111_heptamer()
    x = jnp.array([[-1.0, 30.0, system.box_hi[2] + 3.0], [5.0, 5.0, system.box_lo[2] - 1.0]])
    y = np.asarray(confine(system, x))
    chex.assert_shape(y, (2, 3))
    frac = np.linalg.solve(system.cell[:2, :2].T, y[:, :2].T).T
    assert np.all((frac >= 0) & (frac < 1))
    np.testing.assert_allclose(y[:, 2], [system.box_hi[2], system.box_lo[2]])
    np.testing.assert_array_equal(np.asarray(system.confine(x)), y)


@pytest.mark.parametrize("factory", [pt111_heptamer, stepped_pt_adatom])
def test_template_images_cover_the_reach(factory):
    from godiff_jax.geometry import template_images

    system = factory()
    pos, atom = template_images(system, 6.0, 1.0)
    # every template atom's periodic copies near the cell are listed
    for i in (0, system.n_template - 1):
        near = pos[atom == i]
        target = system.template_positions[i] + system.cell[0] + system.cell[1]
        assert np.min(np.linalg.norm(near - target, axis=1)) < 1e-9
