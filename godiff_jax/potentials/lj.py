"""Lennard-Jones energy in JAX, shifted to zero at the cutoff (ASE's `smooth=False` model).

    u(r) = 4 epsilon [(sigma / r)^12 - (sigma / r)^6] - u(cutoff),  r <= cutoff; else 0

summed once over every pair of atoms, periodic images included (an atom and its own
images too, when the cell is narrower than twice the cutoff). All atoms interact the
same way whatever their element. Matches `ase.calculators.lj.LennardJones(epsilon=...,
sigma=..., rc=cutoff, smooth=False)` (whose `rc` defaults to 3 sigma, as here).

`lj_energy_fn(system)` has the interface of `emt_energy_fn`: the template-template part is
a host-side float64 constant and the jitted function sums pairs involving mobile atoms.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from godiff_jax.geometry import IMAGE_MARGIN, PeriodicImages
from godiff_jax.potentials.emt import EnergyFn
from godiff_jax.system import System

# r is floored at this fraction of sigma: the energy there (~1e24 epsilon) still fits in
# float32, and coinciding atoms get a huge finite energy and zero force, not inf/NaN.
_MIN_R_OVER_SIGMA = 1e-2


def _pair_energy(xp, d2, ok, epsilon: float, sigma: float, cutoff: float):
    d2 = xp.where(ok, xp.maximum(d2, (_MIN_R_OVER_SIGMA * sigma) ** 2), cutoff * cutoff)
    c6 = (sigma * sigma / d2) ** 3
    shift = 4.0 * epsilon * ((sigma / cutoff) ** 12 - (sigma / cutoff) ** 6)
    return xp.where(ok, 4.0 * epsilon * (c6 * c6 - c6) - shift, 0.0)


def _template_energy(
    pos: np.ndarray, shifts: np.ndarray, epsilon: float, sigma: float, cutoff: float
) -> float:
    """0.5 * sum over ordered template pairs (all translations), float64."""
    total = 0.0
    zero = np.all(shifts == 0.0, axis=1)
    img = pos[None, :, :] + shifts[:, None, :]  # [S, J, 3]
    for start in range(0, len(pos), 128):
        stop = min(start + 128, len(pos))
        d = img[None] - pos[start:stop, None, None, :]  # [I, S, J, 3]
        d2 = np.sum(d * d, axis=-1)
        self_pair = np.arange(start, stop)[:, None] == np.arange(len(pos))[None, :]  # [I, J]
        ok = (d2 <= cutoff**2) & ~(self_pair[:, None, :] & zero[None, :, None])
        total += 0.5 * float(np.sum(_pair_energy(np, d2, ok, epsilon, sigma, cutoff)))
    return total


def _build(
    template_positions: np.ndarray,
    n_mobile: int,
    cell: np.ndarray | None,
    pbc: Sequence[bool] | bool,
    epsilon: float,
    sigma: float,
    cutoff: float | None,
) -> EnergyFn:
    epsilon, sigma = float(epsilon), float(sigma)
    cutoff = 3.0 * sigma if cutoff is None else float(cutoff)
    if not (sigma > 0 and cutoff > 0):
        raise ValueError(f"LJ needs sigma > 0 and cutoff > 0, got {sigma=}, {cutoff=}")
    if n_mobile < 1:
        raise ValueError("LJ energy needs at least one atom whose position is an input")
    images = PeriodicImages(cell, pbc, cutoff + IMAGE_MARGIN)
    tpos = images.wrap_host(np.asarray(template_positions, dtype=float).reshape(-1, 3))
    shifts = images.shifts()
    template_energy = _template_energy(tpos, shifts, epsilon, sigma, cutoff) if len(tpos) else 0.0
    cand = images.candidates(tpos) if len(tpos) else None
    n_shift = len(images.pair_shifts())
    mm_pair = ~(np.eye(n_mobile, dtype=bool)[:, :, None] & (np.arange(n_shift) == 0))
    cut2 = cutoff * cutoff

    def energy(mobile_positions: jax.Array) -> jax.Array:
        x = jnp.asarray(mobile_positions)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.result_type(float))
        x = images.wrap(x.reshape(n_mobile, 3))
        d = images.pair_vectors(x)
        d2 = jnp.sum(d * d, axis=-1)  # [M, M, S]
        ok = jnp.asarray(mm_pair) & (d2 <= cut2)
        total = 0.5 * jnp.sum(_pair_energy(jnp, d2, ok, epsilon, sigma, cutoff))
        if cand is not None:
            pos, _, live = cand.gather(x)  # template images near each mobile atom
            d = pos - x[:, None, :]  # [M, C, 3]
            d2 = jnp.sum(d * d, axis=-1)
            ok = live & (d2 <= cut2)
            total = total + jnp.sum(_pair_energy(jnp, d2, ok, epsilon, sigma, cutoff))
        return total + template_energy

    return energy


def make_lj_energy(
    numbers: Sequence[int] | np.ndarray,
    cell: np.ndarray | Sequence[Sequence[float]] | None = None,
    pbc: bool | Sequence[bool] = False,
    epsilon: float = 1.0,
    sigma: float = 1.0,
    cutoff: float | None = None,
) -> EnergyFn:
    """LJ energy (epsilon units) of any atoms: energy(positions [N, 3]) -> scalar.

    `numbers` only fixes N (LJ ignores elements); `cutoff` defaults to 3 sigma.
    """
    n = len(np.asarray(numbers).reshape(-1))
    return _build(np.zeros((0, 3)), n, cell, pbc, epsilon, sigma, cutoff)


def lj_energy_fn(
    system: System, epsilon: float = 1.0, sigma: float = 1.0, cutoff: float | None = None
) -> EnergyFn:
    """LJ energy of template + mobile atoms: energy(mobile_positions [M, 3]) -> scalar.

    `cutoff` defaults to 3 sigma. Template-template pairs are a precomputed constant.
    """
    return _build(
        system.template_positions,
        system.n_mobile,
        system.cell,
        system.pbc,
        epsilon,
        sigma,
        cutoff,
    )
