"""Host-side neighbour tables of the score model, built once per System (numpy).

The template never moves, so everything about it is a table: its own neighbour graph
(`template_graph`), which atoms lattice translations map onto each other
(`template_classes`), and a grid over the confinement box listing, for each cell, every
template image within the cutoff of any point of the cell (`template_grid`); plus the
lattice shifts that mobile-mobile pairs need (`mobile_image_shifts`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from godiff_jax.geometry import image_shifts, lattice_heights, periodic_axes, template_images
from godiff_jax.model.layers import FAR
from godiff_jax.system import System

_GRID_TOL = 1e-2  # Å of slack in grid-cell distances, for float32 rounding of lookups


class TemplateGraph(NamedTuple):
    """Template-template neighbours within the cutoff, padded to K per atom."""

    nbr: np.ndarray  # [Nt, Kt] int32 neighbour index (0 on padding)
    r: np.ndarray  # [Nt, Kt, 3] float32 Å vector i -> j image (far away on padding)


class TemplateGrid(NamedTuple):
    """Candidate template neighbours per grid cell over the confinement box."""

    lo: np.ndarray  # [3] grid origin: fractional (x, y) and Å (z) in surface mode; Å in 3D
    step: np.ndarray  # [3] cell size in the same units
    shape: tuple[int, int, int]  # cells per axis
    cand_image: np.ndarray  # [n_cells, Kc] int32 index into image_pos (padding -> last)
    image_pos: np.ndarray  # [n_images + 1, 3] float32 Å template images (last: far away)
    image_atom: np.ndarray  # [n_images + 1] int32 template atom of each image


def template_classes(system: System, tol: float = 1e-4) -> np.ndarray:
    """[Nt] index of a representative of each template atom's translation class.

    A translation t (a difference of two template positions) is a symmetry when it maps
    every template atom onto a template atom of the same element, modulo the cell along
    periodic axes (within tol Å). Atoms related by symmetries see the same template
    neighbourhood, so the template-only pass gives them identical features. The
    representative of a class is its lowest index.
    """
    pos = np.asarray(system.template_positions, float)
    z = np.asarray(system.template_numbers)
    n = len(pos)
    rep = np.arange(n)
    periodic = periodic_axes(system)
    if n == 0 or not periodic.any():
        return rep
    cell = np.asarray(system.cell, float)
    inv = np.linalg.inv(cell)

    def wrap(d):  # minimum-image displacement along periodic axes
        frac = d @ inv
        frac = frac - np.round(frac) * periodic
        return frac @ cell

    for j in range(1, n):
        if z[j] != z[0] or rep[j] == rep[0]:
            continue  # 0 -> j is then a product of symmetries already found
        t = pos[j] - pos[0]
        dist = np.linalg.norm(wrap((pos + t)[:, None, :] - pos[None, :, :]), axis=-1)
        image = np.argmin(dist, axis=1)
        if np.all(dist[np.arange(n), image] < tol) and np.all(z[image] == z):
            # t is a symmetry: every atom i lies in the class of its image i + t.
            for i in range(n):
                a, b = rep[i], rep[image[i]]
                if a != b:
                    rep[rep == max(a, b)] = min(a, b)
    return rep


def template_graph(system: System, cutoff: float) -> TemplateGraph:
    """Template-only neighbour list (periodic images per the system's cell and pbc)."""
    pos = np.asarray(system.template_positions, float)
    n_t = len(pos)
    image_pos, image_atom = template_images(system, cutoff, 0.0)
    d = image_pos[None, :, :] - pos[:, None, :]  # [Nt, n_images, 3]
    dist = np.linalg.norm(d, axis=-1)
    keep = (dist < cutoff) & (dist > 1e-8)  # drops each atom's own zero-shift copy
    k = max(1, int(keep.sum(axis=1).max(initial=0)))
    nbr = np.zeros((n_t, k), np.int32)
    r = np.zeros((n_t, k, 3), np.float32)
    r[..., 0] = FAR
    for i in range(n_t):
        (js,) = np.nonzero(keep[i])
        nbr[i, : len(js)] = image_atom[js]
        r[i, : len(js)] = d[i, js]
    return TemplateGraph(nbr, r)


def _dist_to_segments(q: np.ndarray, starts: list, edges: list) -> np.ndarray:
    """Min distance from 2D points q [..., 2] to segments start + [0, 1] * edge."""
    out = None
    for s0, e in zip(starts, edges, strict=True):
        rel = q - s0
        u = np.clip(rel @ e / (e @ e), 0.0, 1.0)
        dist = np.linalg.norm(rel - u[..., None] * e, axis=-1)
        out = dist if out is None else np.minimum(out, dist)
    return out


def _interval_dist(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """[n_cells, n_points] distance from points x to the intervals [lo, hi]."""
    return np.maximum(np.maximum(lo[:, None] - x[None, :], x[None, :] - hi[:, None]), 0.0)


def template_grid(
    system: System, cutoff: float, spacing: float, margin: float
) -> TemplateGrid | None:
    """Grid cells over the box (+ margin) with every template image within the cutoff.

    A template image is listed for a cell when its exact distance to the cell (a
    parallelogram in x/y times an interval in z, or an axis-aligned box in cluster mode)
    is below cutoff + `_GRID_TOL`, so any point of the cell finds all its neighbours.
    """
    if system.n_template == 0:
        return None
    image_pos, image_atom = template_images(system, cutoff, 2.0 * spacing + margin)
    cell = np.asarray(system.cell, float)
    reach = cutoff + _GRID_TOL
    if system.mode == "surface":
        ab = cell[:2, :2]
        n_u = max(1, math.ceil(np.linalg.norm(cell[0]) / spacing))
        n_v = max(1, math.ceil(np.linalg.norm(cell[1]) / spacing))
        z_lo = float(system.box_lo[2]) - margin
        z_hi = float(system.box_hi[2]) + margin
        n_z = max(1, math.ceil((z_hi - z_lo) / spacing))
        dz = (z_hi - z_lo) / n_z
        lo = np.array([0.0, 0.0, z_lo])
        step = np.array([1.0 / n_u, 1.0 / n_v, dz])
        shape = (n_u, n_v, n_z)
        # z distance per z-slab, then x/y distance to each cell's parallelogram.
        z0 = z_lo + dz * np.arange(n_z)
        d_z = _interval_dist(image_pos[:, 2], z0, z0 + dz)  # [n_z, n_img]
        ea, eb = ab[0] / n_u, ab[1] / n_v
        # Prune images far from the whole grid region before the per-cell work.
        region = _parallelogram_dist(image_pos[:, :2], np.zeros(2), ab[0], ab[1])
        z_all = _interval_dist(image_pos[:, 2], np.array([z_lo]), np.array([z_hi]))[0]
        near = np.hypot(region, z_all) < reach
        image_pos, image_atom, d_z = image_pos[near], image_atom[near], d_z[:, near]
        iu, iv = np.meshgrid(np.arange(n_u), np.arange(n_v), indexing="ij")
        origins = iu.reshape(-1, 1) * ea + iv.reshape(-1, 1) * eb  # [n_u*n_v, 2]
        d_xy = np.stack(
            [_parallelogram_dist(image_pos[:, :2], o, ea, eb) for o in origins]
        )  # [n_u*n_v, n_img]
        within = d_xy[:, None, :] ** 2 + d_z[None, :, :] ** 2 < reach**2
    else:
        box_lo = np.asarray(system.box_lo, float) - margin
        box_hi = np.asarray(system.box_hi, float) + margin
        shape = tuple(
            max(1, math.ceil((h - l) / spacing)) for l, h in zip(box_lo, box_hi, strict=True)
        )
        step = (box_hi - box_lo) / np.array(shape)
        lo = box_lo
        d_ax = []
        for ax in range(3):
            c0 = lo[ax] + step[ax] * np.arange(shape[ax])
            d_ax.append(_interval_dist(image_pos[:, ax], c0, c0 + step[ax]))
        d2 = (
            d_ax[0][:, None, None, :] ** 2
            + d_ax[1][None, :, None, :] ** 2
            + d_ax[2][None, None, :, :] ** 2
        )
        within = d2 < reach**2
    within = within.reshape(-1, len(image_pos))  # [n_cells, n_img], C order (u, v, z)
    used = within.any(axis=0)
    image_pos, image_atom, within = image_pos[used], image_atom[used], within[:, used]
    n_img = len(image_pos)
    k_c = max(1, int(within.sum(axis=1).max(initial=0)))
    cand = np.full((within.shape[0], k_c), n_img, np.int32)
    for c in range(within.shape[0]):
        (js,) = np.nonzero(within[c])
        cand[c, : len(js)] = js
    far = np.full((1, 3), FAR)
    return TemplateGrid(
        lo=lo.astype(np.float32),
        step=step.astype(np.float32),
        shape=shape,
        cand_image=cand,
        image_pos=np.concatenate([image_pos, far]).astype(np.float32),
        image_atom=np.concatenate([image_atom, [0]]).astype(np.int32),
    )


def _parallelogram_dist(p: np.ndarray, o: np.ndarray, ea: np.ndarray, eb: np.ndarray):
    """Distance (Å) from 2D points p [n, 2] to the parallelogram o + [0,1] ea + [0,1] eb."""
    q = p - o
    st = q @ np.linalg.inv(np.stack([ea, eb]))
    inside = np.all((st >= 0.0) & (st <= 1.0), axis=-1)
    edge = _dist_to_segments(q, [np.zeros(2), eb, np.zeros(2), ea], [ea, ea, eb, eb])
    return np.where(inside, 0.0, edge)


def mobile_image_shifts(system: System, cutoff: float) -> np.ndarray:
    """[S, 3] Å lattice shifts covering every mobile-mobile image within the cutoff.

    Displacements are first wrapped to fractional coordinates in [-1/2, 1/2] along
    periodic axes; an image n is then within the cutoff only if |n| <= 1/2 + cutoff / h
    (h the distance between cell faces), so S = 1 for cells wider than twice the cutoff.
    """
    periodic = periodic_axes(system)
    cell = np.asarray(system.cell, float)
    n_max = np.floor(0.5 + cutoff / lattice_heights(cell))
    return image_shifts(cell, periodic, n_max)
