"""Periodic geometry: lattice images, minimum-image displacements, wrapping and confinement.

One place for what the energy models (EMT, LJ), the score model's host tables, the
distance filter, the success tests and `System` all need:

- `integer_shifts` / `image_shifts`: the lattice translations that can matter, zero first.
- `minimum_image`: displacements wrapped to fractional [-1/2, 1/2] along periodic axes.
- `PeriodicImages` (+ `Candidates`): which images of which atoms can come within a reach
  of each other, for cells of any size, and per-bin lists of fixed-atom images.
- `image_distances`, `min_distance`: distances over the 3^n neighbouring images.
- `confine`: clamp into the box and wrap x/y into the cell (surface mode).
- `template_images`: every template image within a reach of the cell.

Where jax-md fits and where it does not: `jax_md.space.free` gives the displacements of a
non-periodic system (cluster mode, `displacement_fn`), and its `periodic_general` is the
reference the tests hold `minimum_image` to on fully periodic cells. Our systems are
periodic in x/y only (a slab with vacuum), which jax-md's spaces do not express, and the
adatom's cell (plane spacings 8.3 and 5.3 Å) is narrower than twice the cutoffs (6 Å score
model, ~5 Å EMT), so one minimum image is not enough: an atom sees several images of
another and its own images. Those need the image enumeration here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase.geometry import complete_cell

if TYPE_CHECKING:
    from godiff_jax.system import System

# Extra reach (Å) when deciding which periodic images can matter, so that wrapping
# round-off in float32 can never drop a pair that is just inside the cutoff.
IMAGE_MARGIN = 0.05


def periodic_axes(system: System) -> np.ndarray:
    """[3] bool: x/y (and z if the template is periodic in z) for surfaces, none for clusters."""
    if system.mode == "cluster":
        return np.zeros(3, bool)
    return np.array([True, True, bool(system.pbc[2])])


def lattice_heights(cell: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of the cell (Å), one per cell vector."""
    return 1.0 / np.linalg.norm(np.linalg.inv(cell).T, axis=1)


def integer_shifts(n_max: Sequence[int]) -> np.ndarray:
    """[S, 3] int n with |n_k| <= n_max[k], ordered by |n|_1 then lexicographically (zero first)."""
    ranges = [range(-int(n), int(n) + 1) for n in n_max]
    ns = sorted(itertools.product(*ranges), key=lambda n: (sum(map(abs, n)), n))
    return np.asarray(ns, dtype=int).reshape(-1, 3)


def image_shifts(cell: np.ndarray, periodic: np.ndarray, n_max: np.ndarray) -> np.ndarray:
    """[S, 3] Å: n @ cell for integer n in [-n_max, n_max] on periodic axes, zero first."""
    n = np.where(np.asarray(periodic, bool), np.asarray(n_max), 0)
    return integer_shifts(n).astype(float) @ cell


def minimum_image(d: jax.Array, cell: np.ndarray, periodic: np.ndarray) -> jax.Array:
    """Displacements d [..., 3] Å wrapped to fractional [-1/2, 1/2] along periodic axes."""
    periodic = np.asarray(periodic, bool)
    if not periodic.any():
        return d
    cell = np.asarray(cell)
    frac = d @ jnp.asarray(np.linalg.inv(cell), d.dtype)
    frac = frac - jnp.round(frac) * jnp.asarray(periodic, d.dtype)
    return frac @ jnp.asarray(cell, d.dtype)


def displacement_fn(system: System) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """jax-md style displacement(Ra, Rb) -> Ra - Rb (Å), minimum image on periodic axes."""
    periodic = periodic_axes(system)
    if not periodic.any():
        # Imported here, not at the top: jax_md computes at import, which would start JAX's
        # backend before an entry point can split the CPU (runtime.split_cpu).
        from jax_md import space

        displacement, _ = space.free()
        return displacement
    cell = np.asarray(system.cell, float)
    return lambda ra, rb: minimum_image(ra - rb, cell, periodic)


class PeriodicImages:
    """Which lattice translations can bring two atoms within `reach` of each other.

    Positions are wrapped into the cell along periodic axes first (fractional coords in
    [0, 1)); then along periodic axis k a translation by n_k cell vectors matters only if
    |n_k| <= ceil(reach / h_k), h_k being the spacing of the lattice planes normal to
    the reciprocal vector k. This is what makes cells narrower than twice the cutoff
    work: several images of the same atom, and an atom's own images, are all counted.

    Along a "wide" axis (h_k >= 2 reach) a pair within reach has |df_k + n_k| < 1/2, so
    the only image that can matter is the one rounding df_k picks (minimum image), and
    no atom reaches its own images; pair sums then enumerate narrow axes only.
    """

    def __init__(self, cell: np.ndarray | None, pbc: Sequence[bool] | bool, reach: float):
        self.pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=float)
        cell = cell.reshape(3, 3)
        if self.pbc.any():
            lengths = np.linalg.norm(cell, axis=1)
            if np.any(lengths[self.pbc] < 1e-12):
                raise ValueError(f"periodic axis with a zero-length cell vector: {cell}")
            cell = complete_cell(cell)
            if abs(np.linalg.det(cell)) < 1e-12:
                raise ValueError(f"cell is singular: {cell.tolist()}")
            self.inv_cell = np.linalg.inv(cell)
            heights = 1.0 / np.linalg.norm(self.inv_cell, axis=0)
        else:
            self.inv_cell = np.eye(3)
            heights = np.full(3, np.inf)
        self.cell = cell
        self.reach = float(reach)
        self.n_max = np.where(self.pbc, np.ceil(self.reach / heights), 0).astype(int)
        self.heights = heights
        self.wide = self.pbc & (heights >= 2.0 * self.reach)

    def integer_shifts(self) -> np.ndarray:
        """[S, 3] int lattice translations, the zero shift first."""
        return integer_shifts(self.n_max)

    def shifts(self) -> np.ndarray:
        """[S, 3] Cartesian translations (Å), the zero shift first."""
        return self.integer_shifts() @ self.cell

    def pair_shifts(self) -> np.ndarray:
        """[S, 3] Cartesian translations (Å) along narrow axes, the zero shift first."""
        n = self.integer_shifts()
        return n[np.all((n == 0) | ~self.wide, axis=1)] @ self.cell

    def pair_vectors(self, wrapped: jax.Array) -> jax.Array:
        """[M, M, S, 3] vectors from atom i to the images of atom j, S as `pair_shifts`.

        Entry [i, i, 0] is the atom itself (zero vector), not a pair.
        """
        dtype = wrapped.dtype
        d = wrapped[None, :, :] - wrapped[:, None, :]
        if self.wide.any():
            frac = jax.lax.stop_gradient(d) @ jnp.asarray(self.inv_cell, dtype)
            n = jnp.round(frac) * jnp.asarray(self.wide, dtype)
            d = d - n @ jnp.asarray(self.cell, dtype)
        return d[:, :, None, :] + jnp.asarray(self.pair_shifts(), dtype)[None, None]

    def wrap_host(self, positions: np.ndarray) -> np.ndarray:
        if not self.pbc.any():
            return np.asarray(positions, dtype=float)
        frac = positions @ self.inv_cell
        n = np.where(self.pbc, np.floor(frac), 0.0)
        return positions - n @ self.cell

    def wrap(self, positions: jax.Array) -> jax.Array:
        """Wrap along periodic axes; the translation has zero gradient, as it should."""
        if not self.pbc.any():
            return positions
        dtype = positions.dtype
        frac = positions @ jnp.asarray(self.inv_cell, dtype)
        n = jax.lax.stop_gradient(jnp.floor(frac) * jnp.asarray(self.pbc, dtype))
        return positions - n @ jnp.asarray(self.cell, dtype)

    def bin_counts(self, bin_width: float = 1.0, max_per_axis: int = 24) -> np.ndarray:
        """[3] bins per axis for `candidates`: ~bin_width Å wide along periodic axes."""
        n = np.ceil(np.where(self.pbc, self.heights, 0.0) / bin_width)
        return np.clip(n, 1, max_per_axis).astype(int)

    def candidates(self, wrapped: np.ndarray, n_bins: np.ndarray | None = None) -> Candidates:
        """Images of fixed, wrapped atoms that an atom in each bin of the cell can reach.

        The wrapped cell is cut into bins along periodic axes (fractional coordinates);
        an image at fractional g is out of reach of bin [lo, hi) along periodic axis k
        when h_k * dist(g_k, [lo, hi]) >= reach. Without periodic axes there is one bin
        holding every atom.
        """
        n_bins = self.bin_counts() if n_bins is None else np.asarray(n_bins, dtype=int)
        n_bins = np.where(self.pbc, n_bins, 1)
        shifts = self.integer_shifts()  # [S, 3]
        frac = wrapped @ self.inv_cell  # [A, 3]
        g = (frac[:, None, :] + shifts[None, :, :]).reshape(-1, 3)  # [A*S, 3]
        atom = np.repeat(np.arange(len(wrapped)), len(shifts))
        cart = (wrapped[:, None, :] + (shifts @ self.cell)[None]).reshape(-1, 3)
        # Per axis: near[k][i, a] says whether image a is within reach of bin i along k.
        near = []
        for k in range(3):
            lo = np.arange(n_bins[k])[:, None] / n_bins[k]
            out = np.maximum(np.maximum(lo - g[None, :, k], g[None, :, k] - lo - 1 / n_bins[k]), 0)
            near.append(out * self.heights[k] < self.reach if self.pbc[k] else out >= 0)
        bins = np.stack(np.meshgrid(*[np.arange(n) for n in n_bins], indexing="ij"), -1)
        keep = [near[0][i] & near[1][j] & near[2][k] for i, j, k in bins.reshape(-1, 3)]
        n_cand = max(max(int(m.sum()) for m in keep), 1)
        pos = np.zeros((len(keep), n_cand, 3))
        index = np.zeros((len(keep), n_cand), dtype=np.int32)
        mask = np.zeros((len(keep), n_cand), dtype=bool)
        for b, m in enumerate(keep):
            (sel,) = np.nonzero(m)
            pos[b, : len(sel)] = cart[sel]
            index[b, : len(sel)] = atom[sel]
            mask[b, : len(sel)] = True
        return Candidates(self, n_bins, pos, index, mask)


class Candidates(NamedTuple):
    """Per-bin lists of fixed-atom images within reach, padded to a common length C."""

    images: PeriodicImages
    n_bins: np.ndarray  # [3] bins per axis
    positions: np.ndarray  # [B, C, 3] Å (padding: any finite value)
    index: np.ndarray  # [B, C] which fixed atom (padding: 0)
    mask: np.ndarray  # [B, C] False on padding

    def gather(self, wrapped: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """For wrapped positions [M, 3]: candidate positions [M, C, 3], index, mask [M, C]."""
        images, dtype = self.images, wrapped.dtype
        if len(self.positions) == 1:
            shape = (len(wrapped), *self.mask.shape[1:])
            return (
                jnp.broadcast_to(jnp.asarray(self.positions[0], dtype), (*shape, 3)),
                jnp.broadcast_to(jnp.asarray(self.index[0]), shape),
                jnp.broadcast_to(jnp.asarray(self.mask[0]), shape),
            )
        frac = jax.lax.stop_gradient(wrapped) @ jnp.asarray(images.inv_cell, dtype)
        # Wrapping round-off can leave frac a hair outside [0, 1): clip into the edge
        # bins; the reach margin covers the difference.
        n = jnp.asarray(self.n_bins, dtype)
        b = jnp.clip(jnp.floor(frac * n), 0, n - 1).astype(jnp.int32)
        strides = np.array([self.n_bins[1] * self.n_bins[2], self.n_bins[2], 1], np.int32)
        flat = jnp.sum(b * jnp.asarray(strides), axis=-1)
        return (
            jnp.asarray(self.positions, dtype)[flat],
            jnp.asarray(self.index)[flat],
            jnp.asarray(self.mask)[flat],
        )


def _neighbour_shifts(pbc) -> np.ndarray:
    """[K, 3] integer lattice shifts -1..1 along the periodic axes (K = 3^n_periodic), in
    lexicographic order (callers that break ties by position rely on it)."""
    ranges = [(-1, 0, 1) if p else (0,) for p in pbc]
    return np.array(list(itertools.product(*ranges)), dtype=float)


def image_distances(p1: jax.Array, p2: jax.Array, cell, pbc) -> jax.Array:
    """[K, A, B] distances from p1 [A, 3] to the periodic images of p2 [B, 3].

    Fractional differences are wrapped to [-0.5, 0.5) along periodic axes, then the 3^n
    neighbouring images are kept, so the minimum over K is the minimum image even for
    skewed cells (as long as the cell is not much smaller than the distances of interest).
    Without periodic axes K = 1 and the distances are jax-md's free-space ones.
    """
    pbc = tuple(bool(p) for p in pbc)
    if not any(pbc):
        from jax_md import space

        displacement, _ = space.free()
        return space.distance(space.map_product(displacement)(p2, p1))[None]  # [1, A, B]
    diff = p2[None, :, :] - p1[:, None, :]  # [A, B, 3]
    cell = np.asarray(cell, dtype=float)
    if abs(np.linalg.det(cell)) < 1e-12:
        raise ValueError(f"periodic boundaries need a non-singular cell, got {cell.tolist()}")
    cell_j = jnp.asarray(cell, diff.dtype)
    frac = diff @ jnp.asarray(np.linalg.inv(cell), diff.dtype)
    periodic = jnp.asarray(pbc)
    frac = jnp.where(periodic, frac - jnp.round(frac), frac)
    shifts = jnp.asarray(_neighbour_shifts(pbc), diff.dtype)  # [K, 3]
    vec = (frac[None] + shifts[:, None, None, :]) @ cell_j  # [K, A, B, 3]
    return jnp.sqrt(jnp.sum(vec**2, axis=-1))


def neighbour_shifts_cartesian(cell: np.ndarray, pbc) -> np.ndarray:
    """[K, 3] Å: the 3^n neighbouring lattice translations of `image_distances`."""
    return _neighbour_shifts(pbc) @ np.asarray(cell, float)


def min_distance(system: System, mobile_positions: jax.Array) -> jax.Array:
    """Smallest distance (Å) of any pair with at least one mobile atom, minimum image.

    Mobile–mobile and mobile–template pairs (and a mobile atom's own periodic images);
    surface systems are periodic in x/y over the cell, clusters not at all. Pure JAX:
    jit/vmap over `mobile_positions` [M, 3] with the system closed over.
    """
    x = jnp.asarray(mobile_positions)
    allpos = system.all_positions(x)
    pbc = system.pbc if system.mode == "surface" else (False, False, False)
    d = image_distances(x, allpos, system.cell, pbc)  # [K, M, N]
    zero_shift = np.all(_neighbour_shifts(pbc) == 0, axis=1)  # [K]
    self_pair = (
        np.arange(system.n_atoms)[None, :]
        == (system.n_template + np.arange(system.n_mobile))[:, None]
    )  # [M, N]
    excluded = zero_shift[:, None, None] & self_pair[None]
    return jnp.min(jnp.where(jnp.asarray(excluded), jnp.inf, d))


def clip_per_atom(dx: jax.Array, max_step: float) -> jax.Array:
    """dx [..., M, 3] with every atom's step shortened to at most max_step."""
    norm = jnp.linalg.norm(dx, axis=-1, keepdims=True)
    return dx * jnp.minimum(1.0, max_step / jnp.maximum(norm, 1e-12))


def confine(system: System, mobile_positions: jax.Array) -> jax.Array:
    """Clamp into the box and wrap x/y into the periodic cell (surface mode)."""
    x = jnp.asarray(mobile_positions)  # float64 numpy input becomes float32 without x64
    lo = jnp.asarray(system.box_lo, x.dtype)
    hi = jnp.asarray(system.box_hi, x.dtype)
    if system.mode == "cluster":
        return jnp.clip(x, lo, hi)
    ab = jnp.asarray(system.cell[:2, :2], x.dtype)
    frac = jnp.linalg.solve(ab.T, x[..., :2].reshape(-1, 2).T).T.reshape(x[..., :2].shape)
    xy = (frac % 1.0) @ ab
    z = jnp.clip(x[..., 2:], lo[2], hi[2])
    return jnp.concatenate([xy, z], axis=-1)


def template_images(system: System, cutoff: float, pad: float) -> tuple[np.ndarray, np.ndarray]:
    """All template images that can lie within cutoff + pad of the cell's unit region:
    positions [I, 3] Å and the template atom of each [I]."""
    periodic = periodic_axes(system)
    pos = np.asarray(system.template_positions, float)
    cell = np.asarray(system.cell, float)
    frac = np.linalg.solve(cell.T, pos.T).T if len(pos) else np.zeros((0, 3))
    reach = np.ceil((cutoff + pad) / lattice_heights(cell) + np.abs(frac).max(initial=0.0)) + 1
    shifts = image_shifts(cell, periodic, reach)
    image_pos = (pos[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    image_atom = np.tile(np.arange(len(pos)), len(shifts))
    return image_pos, image_atom
