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
from jax.scipy.special import log_ndtr, ndtr, ndtri

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


def truncated_normal(key: jax.Array, lo: jax.Array, hi: jax.Array, shape, dtype=jnp.float32):
    """Standard normal truncated to [lo, hi] (broadcast to `shape`), exact in the tails.

    Inverse CDF, written so that no probability is formed as 1 - p: an interval near 0
    inverts the smaller of its lower- and upper-tail probabilities, and an interval far in
    one tail (mirrored to the upper one) solves log Phi(-x) = log q by Newton's method,
    which stays accurate where q underflows. u lies strictly inside (0, 1), so no draw sits
    on an infinite bound (`jax.random.truncated_normal` returns ~-3.4e38 there about once in
    2^23 draws). Infinite bounds are allowed.
    """
    lo = jnp.broadcast_to(jnp.asarray(lo, dtype), shape)
    hi = jnp.broadcast_to(jnp.asarray(hi, dtype), shape)
    bits = jax.random.randint(key, shape, 0, 1 << 23)
    u = (bits.astype(dtype) + 0.5) * (1.0 / (1 << 23))

    # Interval reaching within 1 of 0: p = Phi(lo) + u Z and q = Phi(-hi) + (1 - u) Z, each
    # accurate when small (Z from the side where it is a difference of small numbers);
    # invert whichever is below one half.
    mass = jnp.where(lo > 0, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))
    p = ndtr(lo) + u * mass
    q = ndtr(-hi) + (1.0 - u) * mass
    central = jnp.where(p < 0.5, ndtri(jnp.clip(p, 1e-38, 0.5)), -ndtri(jnp.clip(q, 1e-38, 0.5)))

    # Interval wholly beyond 1 in one tail: mirror to 1 < a < b, draw log q uniformly between
    # log Phi(-b) and log Phi(-a), then Newton on g(x) = log Phi(-x) (concave, so after the
    # first step the iterates approach the root monotonically from above; 6 steps reach
    # float32 precision from a > 1).
    upper = lo > 1
    a = jnp.where(upper, lo, -hi)
    b = jnp.where(upper, hi, -lo)
    a_safe = jnp.where(a > 1, a, 2.0)
    b_safe = jnp.where(a > 1, b, 3.0)
    la, lb = log_ndtr(-a_safe), log_ndtr(-b_safe)
    log_q = la + jnp.log1p(-u * -jnp.expm1(lb - la))
    x = a_safe
    for _ in range(6):
        g = log_ndtr(-x)
        slope = jnp.exp(-0.5 * x * x - 0.5 * jnp.log(2.0 * jnp.pi) - g)  # -g'(x)
        x = jnp.clip(x + (g - log_q) / slope, a_safe, b_safe)
    tail = jnp.where(upper, x, -x)

    z = jnp.where((lo <= 1) & (hi >= -1), central, tail)
    return jnp.clip(z, lo, hi)


def perturb(
    key: jax.Array,
    sde: VESDE,
    x0: jax.Array,
    t: jax.Array,
    bounds: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Draw x_t ~ p(x_t | x_0) for one structure; returns (x_t, z), x_t = x_0 + sqrt(var) z.

    bounds=None: z ~ N(0, I). bounds=(lo [3], hi [3]) Å: each coordinate with a finite
    bound gets a normal truncated so that x_t stays in [lo, hi], as the reference's
    TruncatedNormal keeps z inside the box the sampler clamps to; coordinates with both
    bounds infinite (x/y of a periodic surface) get a plain normal.
    """
    std = jnp.sqrt(marginal_var(sde, t)).astype(x0.dtype)
    z = jax.random.normal(key, x0.shape, x0.dtype)
    if bounds is not None:
        lo_b, hi_b = (jnp.asarray(b, x0.dtype) for b in bounds)
        free = jnp.isinf(lo_b) & jnp.isinf(hi_b)
        safe = jnp.maximum(std, jnp.finfo(x0.dtype).tiny)
        zt = truncated_normal(
            jax.random.fold_in(key, 1), (lo_b - x0) / safe, (hi_b - x0) / safe, x0.shape, x0.dtype
        )
        z = jnp.where(free, z, zt)
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
