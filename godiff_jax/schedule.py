"""Annealing schedules for kT (eV): the fixed geometric one and the adaptive controller."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def exponential_kT(
    kT_start: float, kT_end: float, n_iterations: int, n_anneal: int = 0
) -> np.ndarray:
    """kT_k = exp(linspace(ln kT_start, ln kT_end, n_anneal)), then kT_end for the
    remaining iterations: geometric cooling, eV (n_anneal 0: over all K iterations; the
    cooling needs two iterations to go from kT_start to kT_end, so n_anneal 1 is refused)."""
    if n_iterations < 1:
        raise ValueError(f"need at least one iteration, got {n_iterations}")
    if not (kT_start > 0 and kT_end > 0):
        raise ValueError(f"kT must be positive, got {kT_start}, {kT_end}")
    if n_anneal != 0 and not 2 <= n_anneal <= n_iterations:
        raise ValueError(
            f"kT_anneal_iterations must be 0 (all) or lie in 2..n_iterations "
            f"({n_iterations}), got {n_anneal}"
        )
    n_anneal = n_anneal or n_iterations
    cooling = np.exp(np.linspace(np.log(kT_start), np.log(kT_end), n_anneal))
    return np.concatenate([cooling, np.full(n_iterations - n_anneal, kT_end)])


class Temperature(NamedTuple):
    """A kT controller as an (init, update) pair, carried in the jitted state.

    init() -> state; update(state, progress, energies [N], valid [N]) -> (kT, state):
    the temperature (eV) the buffer of this iteration is drawn at, from the batch just
    evaluated; `progress` is the iteration index (for `budget_temperature`, the
    evaluations so far, this batch included). The state is the last kT (NaN before the first), so a fixed schedule and
    an adaptive one fill the same slot.
    """

    init: Callable[[], jax.Array]
    update: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def _no_kT() -> jax.Array:
    return jnp.full((), jnp.nan, jnp.float32)


def fixed_temperature(kTs: np.ndarray) -> Temperature:
    """kT_k = kTs[k] whatever the energies (the paper's annealing)."""
    table = np.asarray(kTs, np.float32)

    def update(state, iteration, energies, valid):
        kT = jnp.asarray(table)[iteration]
        return kT, kT

    return Temperature(_no_kT, update)


def budget_temperature(kT_start: float, kT_end: float, n_first: int, budget: int) -> Temperature:
    """Geometric cooling over the evaluation budget instead of the iterations (for a
    varying number of samples per iteration): kT_start after the first `n_first`
    evaluations, kT_end once `budget` are spent, log-linear in between."""
    exponential_kT(kT_start, kT_end, 1)  # checks the temperatures
    span = max(budget - n_first, 1)
    lo, hi = np.log(kT_start), np.log(kT_end)

    def update(state, evaluations, energies, valid):
        f = jnp.clip((evaluations - n_first) / span, 0.0, 1.0)
        kT = jnp.exp(lo + f * (hi - lo)).astype(jnp.float32)
        return kT, kT

    return Temperature(_no_kT, update)


SPREADS = ("std", "iqr")
IQR_PER_STD = 1.3489795  # interquartile range of a unit normal


def check_spread(spread: str, name: str = "spread") -> None:
    if spread not in SPREADS:
        raise ValueError(f"{name}: one of {SPREADS}, got {spread!r}")


def energy_variance(energies: jax.Array, valid: jax.Array, spread: str = "std") -> jax.Array:
    """Variance (eV^2) of the valid energies: plain ("std"), or from the interquartile
    range ("iqr": (IQR / 1.349)^2, the normal's variance with that IQR), which a few
    structures tens of eV up (close contacts, random starts) barely move."""
    check_spread(spread)
    if spread == "iqr":
        e = jnp.where(valid, energies, jnp.nan)
        q1, q3 = jnp.nanquantile(e, jnp.array([0.25, 0.75]))
        return jnp.where(jnp.sum(valid) >= 2, ((q3 - q1) / IQR_PER_STD) ** 2, 0.0)
    n = jnp.sum(valid)
    e = jnp.where(valid, energies, 0.0)
    mean = jnp.sum(e) / jnp.maximum(n, 1)
    return jnp.sum(jnp.where(valid, (e - mean) ** 2, 0.0)) / jnp.maximum(n, 1)


def heat_capacity_kT(
    energies: jax.Array,
    valid: jax.Array,
    kT_prev: jax.Array,
    hot_factor: float = 0.95,
    cold_factor: float = 0.5,
    spread: str = "std",
) -> tuple[jax.Array, jax.Array]:
    """(kT, heat capacity) after a batch of energies (eV), as go-diff 1.1.0 anneals.

    First batch (kT_prev NaN): kT = sqrt(Var(E)). Later: C = Var(E) / kT_prev^2 of the valid
    energies; kT = kT_prev * hot_factor while C > 1 (the samples still span more than kT:
    cool slowly), else kT_prev * cold_factor. Fewer than two valid energies keep kT_prev.
    `spread` chooses how Var(E) is measured (`energy_variance`).
    """
    n = jnp.sum(valid)
    var = energy_variance(energies, valid, spread)
    first = ~jnp.isfinite(kT_prev)
    heat = jnp.where(first, jnp.nan, var / jnp.where(first, 1.0, kT_prev) ** 2)
    cooled = kT_prev * jnp.where(heat > 1.0, hot_factor, cold_factor)
    kT = jnp.where(first, jnp.sqrt(var), cooled)
    return jnp.where(n >= 2, kT, kT_prev).astype(jnp.float32), heat.astype(jnp.float32)


def adaptive_temperature(
    kT_start: float, hot_factor: float = 0.95, cold_factor: float = 0.5, spread: str = "std"
) -> Temperature:
    """`heat_capacity_kT` each iteration; kT_start until two valid energies exist."""
    check_spread(spread)  # before any tracing

    def update(state, iteration, energies, valid):
        kT_next, _ = heat_capacity_kT(energies, valid, state, hot_factor, cold_factor, spread)
        # No valid energy yet: start from kT_start; never divide by 0.
        kT = jnp.maximum(jnp.where(jnp.isfinite(kT_next), kT_next, kT_start), 1e-6)
        kT = jnp.asarray(kT, jnp.float32)
        return kT, kT

    return Temperature(_no_kT, update)
