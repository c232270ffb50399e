"""The variance-exploding SDE of GO-Diff, as pure functions.

sigma(t) = sigma_min + (sigma_max - sigma_min) t on t in [0, 1]; the forward marginal is
x_t = x_0 + sqrt(var(t)) z with var(t) = sigma(t)^2 - sigma_min^2, so var(0) = 0 exactly.
The prior is uniform in the confinement box, not the Gaussian marginal (as in the
reference code): at sigma_max = 1 Å the marginal would not cover a 16 Å cell.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from godiff_jax.system import System


class VESDE(NamedTuple):
    """Noise scale in Å."""

    sigma_min: float = 0.01
    sigma_max: float = 1.0


def sigma(sde: VESDE, t: jax.Array) -> jax.Array:
    return sde.sigma_min + (sde.sigma_max - sde.sigma_min) * t


def marginal_var(sde: VESDE, t: jax.Array) -> jax.Array:
    """Variance (Å^2) of x_t given x_0."""
    return sigma(sde, t) ** 2 - sde.sigma_min**2


def diffusion_sq(sde: VESDE, t: jax.Array) -> jax.Array:
    """g(t)^2 = d sigma(t)^2 / dt."""
    return 2.0 * sigma(sde, t) * (sde.sigma_max - sde.sigma_min)


def perturb(
    key: jax.Array,
    sde: VESDE,
    x0: jax.Array,
    t: jax.Array,
    bounds: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Draw x_t ~ p(x_t | x_0) for one structure; returns (x_t, z), x_t = x_0 + sqrt(var) z.

    bounds=None: z ~ N(0, I). bounds=(lo [3], hi [3]) Å: each coordinate of z is a normal
    truncated so that x_t stays in [lo, hi] (infinite bounds leave a coordinate free), as
    the reference's TruncatedNormal keeps z inside the box the sampler clamps to.
    """
    std = jnp.sqrt(marginal_var(sde, t)).astype(x0.dtype)
    if bounds is None:
        z = jax.random.normal(key, x0.shape, x0.dtype)
    else:
        lo = (jnp.asarray(bounds[0], x0.dtype) - x0) / std
        hi = (jnp.asarray(bounds[1], x0.dtype) - x0) / std
        z = jax.random.truncated_normal(key, lo, hi, x0.shape, x0.dtype)
    return x0 + std * z, z


def noise_bounds(system: System) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) [3] Å for `perturb`: the box in z (surface) or in xyz (cluster)."""
    lo = np.asarray(system.box_lo, np.float64).copy()
    hi = np.asarray(system.box_hi, np.float64).copy()
    if system.mode != "cluster":
        lo[:2], hi[:2] = -np.inf, np.inf  # x/y are periodic
    return lo, hi


def sample_prior(
    key: jax.Array, system: System, n: int, dtype: jnp.dtype = jnp.float32
) -> jax.Array:
    """n structures uniform in the confinement box: [n, n_mobile, 3] Å.

    Surface mode: x/y uniform over the periodic cell (frac @ cell), z uniform in the box.
    """
    u = jax.random.uniform(key, (n, system.n_mobile, 3), dtype)
    lo = jnp.asarray(system.box_lo, dtype)
    hi = jnp.asarray(system.box_hi, dtype)
    if system.mode == "cluster":
        return lo + (hi - lo) * u
    xy = u[..., :2] @ jnp.asarray(system.cell[:2, :2], dtype)
    z = lo[2] + (hi[2] - lo[2]) * u[..., 2:]
    return jnp.concatenate([xy, z], axis=-1)
