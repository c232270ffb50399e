"""Boltzmann weights and the weighted denoising score-matching loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from godiff_jax.sde import VESDE, marginal_var, perturb

ScoreConvention = Literal["reference", "textbook"]
# score_fn(params, x [B, M, 3] Å, t [B]) -> [B, M, 3]
ScoreFn = Callable[[object, jax.Array, jax.Array], jax.Array]


def boltzmann_weights(
    energies: jax.Array, kT: float | jax.Array, valid: jax.Array | None = None
) -> jax.Array:
    """w_i = softmax(-(E_i - E_min) / kT) over the valid entries, scaled to sum to their count.

    Invalid entries (masked, e.g. NaN energies or empty archive slots) get weight 0. The
    shift by E_min only matters for round-off: EMT total energies of slabs are large and
    positive, and the weights must not depend on their sign (no E < 0 filter).
    """
    if valid is None:
        valid = jnp.isfinite(energies)
    valid = valid & jnp.isfinite(energies)
    e = jnp.where(valid, energies, jnp.inf)
    logits = jnp.where(valid, -(e - jnp.min(e)) / kT, -jnp.inf)
    n_valid = jnp.sum(valid)
    w = jax.nn.softmax(jnp.where(n_valid > 0, logits, 0.0)) * n_valid
    return jnp.where(valid, w, 0.0)


def dsm_error(
    z: jax.Array, score: jax.Array, var: jax.Array, convention: ScoreConvention = "reference"
) -> jax.Array:
    """Per-structure error, mean over mobile atoms of ||z + c(t) s||^2 (sum over xyz).

    reference: c = var(t) (the authors' code; the net learns score * sigma_t and the
    sampler uses it as the score, which sharpens samples toward modes).
    textbook: c = sigma_t (the standard DSM target, s -> grad log p_t).
    """
    scale = var if convention == "reference" else jnp.sqrt(var)
    scale = scale.reshape(scale.shape + (1,) * (z.ndim - scale.ndim)).astype(z.dtype)
    return jnp.mean(jnp.sum((z + scale * score) ** 2, axis=-1), axis=-1)


def weighted_dsm_loss(
    score_fn: ScoreFn,
    params: object,
    key: jax.Array,
    x0: jax.Array,
    weights: jax.Array,
    *,
    sde: VESDE = VESDE(),
    convention: ScoreConvention = "reference",
    t_min: float = 1e-5,
    bounds: tuple[jax.Array, jax.Array] | None = None,
    node_fraction: float = 1.0,
) -> jax.Array:
    """Mean over the batch of w_b * dsm_error_b, with t ~ U[t_min, 1] per structure.

    x0: [B, M, 3] mobile positions (Å); weights: [B] (0 drops a structure); bounds: the
    box the noised positions are kept in (see `sde.perturb`), None for plain Gaussian noise.
    `node_fraction` scales the per-atom mean: 1 averages over the mobile atoms, M / N over
    all N atoms with the template's terms zero, as the reference does.
    """
    n = x0.shape[0]
    key_t, key_z = jax.random.split(key)
    t = jax.random.uniform(key_t, (n,), x0.dtype, minval=t_min, maxval=1.0)
    xt, z = jax.vmap(perturb, in_axes=(0, None, 0, 0, None))(
        jax.random.split(key_z, n), sde, x0, t, bounds
    )
    score = score_fn(params, xt, t)
    err = dsm_error(z, score, marginal_var(sde, t), convention)
    return jnp.mean(weights.astype(err.dtype) * err) * node_fraction
