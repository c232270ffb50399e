"""Effective-sample-size controllers (go-diff 1.1.0's): how many structures an iteration
evaluates, and how large the training buffer is.

ESS of Boltzmann weights w_i = exp(-(E_i - E_min) / kT): (sum w)^2 / sum w^2, between 1
(one structure dominates) and n (all alike). Sampling: structures are taken in chunks, in
sample order, until the ESS of the chunks taken reaches a target at the last kT (the
temperature the model was trained to sample), at most all of them; the first iteration,
with no temperature yet, takes a fixed count. The choice after chunk c depends only on the
energies of chunks 1..c, so evaluating chunk by chunk and stopping (a host evaluator) and
evaluating the whole batch then discarding what comes after (inside jit) give the same
structures; only the kept ones are counted and archived. Buffer: its size follows an
exponential average of the ESS of the whole archive's weights at the new kT (hundreds
while hot, a few once one basin dominates), times a factor, clipped to [min, max].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def effective_sample_size(energies: jax.Array, valid: jax.Array, kT: jax.Array) -> jax.Array:
    """(sum w)^2 / sum w^2 of the valid entries' Boltzmann weights at kT (eV); 0 if none."""
    e = jnp.where(valid, energies, jnp.inf)
    w = jnp.where(valid, jnp.exp(-(e - jnp.min(e)) / kT), 0.0)
    return jnp.where(jnp.any(valid), jnp.sum(w) ** 2 / jnp.maximum(jnp.sum(w**2), 1e-30), 0.0)


def ess_temperature(
    energies: jax.Array, valid: jax.Array, target: float, kT_lo: float = 1e-4, kT_hi: float = 1e3
) -> jax.Array:
    """[] the lowest kT (eV) in [kT_lo, kT_hi] at which the valid entries' Boltzmann
    weights have an ESS of at least `target` (the ESS grows with kT), by bisection in log
    kT: kT_lo where the ESS is reached there already, kT_hi where it is not reached below
    it, and 0 where no more than `target` entries are valid (no temperature reaches it)."""
    lo, hi = jnp.log(jnp.float32(kT_lo)), jnp.log(jnp.float32(kT_hi))

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = effective_sample_size(energies, valid, jnp.exp(mid)) >= target
        return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

    lo, hi = jax.lax.fori_loop(0, 40, halve, (lo, hi))
    return jnp.where(jnp.sum(valid) > target, jnp.exp(hi), 0.0)


def chunks_needed(
    energies: jax.Array,
    valid: jax.Array,
    kT: jax.Array,
    chunk: int,
    target: float,
    first: int,
) -> jax.Array:
    """[] int32: how many chunks of `chunk` structures (in order) reach the ESS target.

    `valid` marks the structures whose energies count (evaluated, finite); NaN kT (no
    iteration yet) takes `first` structures. All chunks if the target is never reached.
    """
    n = energies.shape[0]
    n_chunks = n // chunk
    ends = chunk * jnp.arange(1, n_chunks + 1)
    within = jnp.arange(n)[None, :] < ends[:, None]  # [C, N]
    ess = jax.vmap(lambda m: effective_sample_size(energies, valid & m, kT))(within)
    reached = ess >= target
    c = jnp.where(jnp.any(reached), jnp.argmax(reached) + 1, n_chunks)
    return jnp.where(jnp.isfinite(kT), c, first // chunk).astype(jnp.int32)


def kept_samples(
    energies: jax.Array,
    ok: jax.Array,
    kT: jax.Array,
    chunk: int,
    target: float,
    first: int,
    remaining: jax.Array,
) -> jax.Array:
    """[N] bool: the structures an iteration keeps (and counts as evaluated).

    `ok`: passed the distance filter (so evaluated); `energies` NaN where not yet
    evaluated or failed. The prefix of `chunks_needed` chunks, cut after the `remaining`
    evaluations the budget allows.
    """
    valid = ok & jnp.isfinite(energies)
    c = chunks_needed(energies, valid, kT, chunk, target, first)
    prefix = jnp.arange(energies.shape[0]) < c * chunk
    kept = ok & prefix
    return kept & (jnp.cumsum(kept) <= remaining)


def buffer_size(
    average: jax.Array,
    ess: jax.Array,
    decay: float,
    factor: float,
    smallest: int,
    largest: int,
) -> tuple[jax.Array, jax.Array]:
    """(size [] int32, new average): average <- decay * average + (1 - decay) * ess (the
    first ESS itself when the average is NaN); size = clip(round(factor * average))."""
    new = jnp.where(jnp.isfinite(average), decay * average + (1.0 - decay) * ess, ess)
    size = jnp.clip(jnp.round(factor * new), smallest, largest).astype(jnp.int32)
    return size, new.astype(jnp.float32)
