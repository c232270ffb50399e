"""System construction, built-in benchmark systems (DESIGN.md section 2), confinement."""

from pathlib import Path

import ase.io
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import fcc111, surface

from godiff_jax.system import (
    load_template,
    make_cluster_system,
    make_surface_system,
    pt111_heptamer,
    stepped_pt_adatom,
)

DATA = Path(__file__).parent / "data"


def _slab(kind):
    if kind == "heptamer":
        atoms = fcc111("Pt", (6, 6, 2), vacuum=8.0)
    else:
        atoms = surface("Pt", (1, 2, 2), 5, vacuum=8.0)
    atoms.positions[:, 2] -= atoms.positions[:, 2].min()
    return atoms


@pytest.mark.parametrize(
    "factory, kind, n_template, n_mobile, z_box",
    [
        (pt111_heptamer, "heptamer", 72, 7, (1.0, 6.0)),
        (stepped_pt_adatom, "adatom", 20, 1, (0.0, 4.0)),
    ],
)
def test_builtin_systems_match_design(factory, kind, n_template, n_mobile, z_box):
    s = factory()
    ref = _slab(kind)
    assert s.mode == "surface"
    assert s.n_template == n_template and s.n_mobile == n_mobile
    assert s.n_atoms == n_template + n_mobile
    assert np.all(s.template_numbers == 78) and np.all(s.mobile_numbers == 78)
    assert s.formula == ("Pt7" if n_mobile == 7 else "Pt")
    assert s.template_positions[:, 2].min() == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(s.template_positions, ref.positions, atol=1e-12)
    np.testing.assert_allclose(s.cell, ref.cell.array, atol=1e-12)
    assert s.pbc == (True, True, False)
    z_top = s.template_positions[:, 2].max()
    assert s.box_lo[2] == pytest.approx(z_top + z_box[0])
    assert s.box_hi[2] == pytest.approx(z_top + z_box[1])
    assert s.box_hi[2] < s.cell[2, 2]
    assert s.mobile_mask.sum() == n_mobile and s.fixed_mask.sum() == n_template
    assert s.box_volume() == pytest.approx(
        abs(np.linalg.det(s.cell[:2, :2])) * (z_box[1] - z_box[0])
    )
    x = np.zeros((n_mobile, 3))
    assert s.all_positions(x).shape == (s.n_atoms, 3)
    assert s.all_positions(np.zeros((4, n_mobile, 3))).shape == (4, s.n_atoms, 3)


def test_surface_system_errors(tmp_path):
    slab = _slab("heptamer")
    with pytest.raises(ValueError, match="outside the cell"):
        make_surface_system(slab, "Pt7", (1.0, 50.0))
    with pytest.raises(ValueError, match="zero or negative"):
        make_surface_system(slab, "Pt7", (2.0, 2.0))
    with pytest.raises(ValueError, match="zero or negative"):
        make_surface_system(slab, "Pt7", (3.0, 1.0))
    with pytest.raises(ValueError, match="at or above"):
        make_surface_system(slab, "Pt7", (-1.0, 3.0))
    with pytest.raises(ValueError, match="empty"):
        make_surface_system(slab, "", (1.0, 6.0))
    with pytest.raises(ValueError, match="empty"):
        make_surface_system(slab, [], (1.0, 6.0))
    with pytest.raises(ValueError, match="cannot parse"):
        make_surface_system(slab, "Xx7", (1.0, 6.0))
    missing = tmp_path / "no_such_slab.extxyz"
    with pytest.raises(FileNotFoundError, match="no_such_slab.extxyz"):
        make_surface_system(missing, "Pt7", (1.0, 6.0))
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_text("this is not\nan extxyz file at all\n")
    with pytest.raises(ValueError, match="garbage.extxyz"):
        make_surface_system(garbage, "Pt7", (1.0, 6.0))
    nonperiodic = slab.copy()
    nonperiodic.pbc = False
    with pytest.raises(ValueError, match="periodic"):
        make_surface_system(nonperiodic, "Pt7", (1.0, 6.0))
    with pytest.raises(ValueError, match="non-empty"):
        make_surface_system(slab[:0], "Pt7", (1.0, 6.0))


def test_cluster_system_and_errors():
    s = make_cluster_system("Pt13", 8.0)
    assert s.mode == "cluster" and s.n_template == 0 and s.n_mobile == 13
    assert s.pbc == (False, False, False)
    np.testing.assert_allclose(s.box_hi - s.box_lo, 8.0)
    assert s.box_volume() == pytest.approx(512.0)
    s2 = make_cluster_system([29, 29, 79], (4.0, 5.0, 6.0))
    assert s2.formula == "AuCu2"
    np.testing.assert_allclose(s2.box_hi - s2.box_lo, [4.0, 5.0, 6.0])
    with pytest.raises(ValueError, match="zero or negative"):
        make_cluster_system("Pt13", 0.0)
    with pytest.raises(ValueError, match="zero or negative"):
        make_cluster_system("Pt13", (4.0, -1.0, 4.0))
    with pytest.raises(ValueError, match="empty"):
        make_cluster_system("  ", 5.0)
    with pytest.raises(ValueError, match="cannot parse"):
        make_cluster_system("Pt1q", 5.0)
    with pytest.raises(ValueError, match="unknown atomic numbers"):
        make_cluster_system([78, 300], 5.0)


def test_confine_surface_wraps_xy_and_clamps_z():
    s = stepped_pt_adatom()
    cell = s.cell
    rng = np.random.default_rng(0)
    frac = rng.uniform(-2.5, 2.5, size=(50, 2))
    z = rng.uniform(s.box_lo[2] - 3, s.box_hi[2] + 3, size=(50, 1))
    x = np.concatenate([frac @ cell[:2, :2], z], axis=1)[:, None, :]  # [50, 1, 3]
    y = np.asarray(s.confine(jnp.asarray(x)))
    assert y.shape == x.shape
    yfrac = np.linalg.solve(cell[:2, :2].T, y[:, 0, :2].T).T
    assert np.all(yfrac >= -1e-12) and np.all(yfrac < 1 + 1e-12)
    # the wrap moves by whole lattice vectors only
    np.testing.assert_allclose(yfrac - frac, np.round(yfrac - frac), atol=1e-9)
    np.testing.assert_allclose(y[:, 0, 2], np.clip(z[:, 0], s.box_lo[2], s.box_hi[2]))
    inside = np.concatenate([np.array([[0.3, 0.6]]) @ cell[:2, :2], [[s.box_lo[2] + 1]]], 1)
    np.testing.assert_allclose(np.asarray(s.confine(jnp.asarray(inside))), inside, atol=1e-12)


def test_confine_cluster_clamps():
    s = make_cluster_system("Pt3", 4.0)
    x = jnp.asarray([[0.0, 11.0, 20.0], [12.0, 13.0, 14.0], [-5.0, 100.0, 10.5]])
    y = np.asarray(s.confine(x))
    np.testing.assert_allclose(y, np.clip(np.asarray(x), 10.0, 14.0))


def test_template_from_extxyz_path(tmp_path):
    slab = _slab("heptamer")
    slab.info.pop("adsorbate_info", None)  # a dict, which extxyz cannot store
    path = tmp_path / "slab.extxyz"
    ase.io.write(path, slab)
    s = make_surface_system(path, "Pt7", (1.0, 6.0))
    ref = pt111_heptamer()
    np.testing.assert_allclose(s.template_positions, ref.template_positions, atol=1e-6)
    np.testing.assert_allclose(s.cell, ref.cell, atol=1e-6)
    np.testing.assert_allclose(s.box_lo[2], ref.box_lo[2], atol=1e-6)
    s_str = make_surface_system(str(path), [78] * 7, (1.0, 6.0))
    assert s_str.n_template == 72
    # a reference structure file (template + adatom) loads as a 21-atom template too
    atoms = load_template(DATA / "pt_adatom_stepped_emt_minimum.extxyz")
    assert len(atoms) == 21
    # the template is a copy, not the caller's object
    assert load_template(slab) is not slab
