"""Reverse-time sampling of the VE-SDE: Euler–Maruyama as one lax.scan."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from godiff_jax.sde import VESDE, diffusion_sq, noise_bounds, sample_prior, truncated_normal
from godiff_jax.system import System

# score(x [B, M, 3] Å, t [B]) -> [B, M, 3]; parameters are closed over by the caller.
BoundScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


class Corrector(NamedTuple):
    """An optional step after each predictor step (force-field guidance), optax-style.

    init(x [B, M, 3]) -> state, before the first step; update(x, t, dt, state) ->
    (x, state) after each predictor step, the state carried through the scan (e.g. an
    L-BFGS memory per structure).
    """

    init: Callable[[jax.Array], object]
    update: Callable[[jax.Array, jax.Array, jax.Array, object], tuple[jax.Array, object]]


def reverse_times(n_steps: int = 500, t_end: float = 0.005) -> tuple[jax.Array, float]:
    """Times t_i = linspace(1, t_end, n_steps) and the constant step dt = t_i - t_{i+1}."""
    if n_steps < 2:
        raise ValueError(f"need at least 2 reverse steps, got {n_steps}")
    return jnp.linspace(1.0, t_end, n_steps), (1.0 - t_end) / (n_steps - 1)


def reverse_sample(
    key: jax.Array,
    score_fn: BoundScoreFn,
    system: System,
    n_samples: int,
    *,
    n_steps: int = 500,
    t_end: float = 0.005,
    sde: VESDE = VESDE(),
    x_init: jax.Array | None = None,
    t_start: jax.Array | None = None,
    corrector: Corrector | None = None,
    confine: bool = True,
    truncate_z: bool = False,
    sharding: jax.sharding.Sharding | None = None,
) -> jax.Array:
    """Draw n_samples structures [n_samples, M, 3] (Å) from the reverse SDE.

    Starts from the uniform prior in the box (or `x_init`), then for each t_i:
    x <- x + g^2 s dt + g sqrt(dt) z (no noise on the last step), an optional corrector
    (`Corrector`), then z is clamped into the box and x/y wrapped into the cell.
    `t_start` [n_samples] enters each structure at its own time: steps with t_i > t_start
    leave it where it is (`x_init` holds it already noised to that time; 1 runs the whole
    trajectory; a corrector's state still advances on those steps). `truncate_z` draws the
    noise of each bounded coordinate from a normal truncated so that the step lands in the
    box (as the reference's sampler does) before the clamp. `sharding` lays the sample
    axis out over devices (`godiff_jax.sharding`).
    """

    def laid_out(x):
        return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)

    key_prior, key_steps = jax.random.split(key)
    x = laid_out(sample_prior(key_prior, system, n_samples) if x_init is None else x_init)
    ts, dt = reverse_times(n_steps, t_end)
    ts = ts.astype(x.dtype)
    noise_on = (jnp.arange(n_steps) < n_steps - 1).astype(x.dtype)
    lo_np, hi_np = noise_bounds(system)
    bounded = np.isfinite(lo_np) | np.isfinite(hi_np)
    lo, hi = jnp.asarray(lo_np, x.dtype), jnp.asarray(hi_np, x.dtype)

    def step(carry, inputs):
        x, cstate = carry
        x_prev = x
        t, k, noise = inputs
        g2 = diffusion_sq(sde, t)
        s = score_fn(x, jnp.full((x.shape[0],), t, x.dtype))
        mean = x + g2 * dt * s
        std = noise * jnp.sqrt(g2 * dt)
        z = jax.random.normal(k, x.shape, x.dtype)
        if truncate_z:
            safe = jnp.maximum(std, jnp.finfo(x.dtype).tiny)
            zt = truncated_normal(
                jax.random.fold_in(k, 1), (lo - mean) / safe, (hi - mean) / safe, x.shape, x.dtype
            )
            z = jnp.where(bounded, zt, z)
        x = mean + std * z
        if corrector is not None:
            x, cstate = corrector.update(x, t, jnp.asarray(dt, x.dtype), cstate)
        if confine:
            x = system.confine(x)
        if t_start is not None:
            x = jnp.where((t <= t_start)[:, None, None], x, x_prev)
        return (laid_out(x), cstate), None

    if t_start is not None:
        t_start = jnp.asarray(t_start, x.dtype)
    keys = jax.random.split(key_steps, n_steps)
    cstate = None if corrector is None else corrector.init(x)
    (x, _), _ = jax.lax.scan(step, (x, cstate), (ts, keys, noise_on))
    return x
