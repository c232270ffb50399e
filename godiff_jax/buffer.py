"""Archive of every evaluated structure, and the Boltzmann-weighted training buffer.

Both are immutable pytrees of fixed shape (capacity known up front), so they live inside
jit, vmap over seeds and checkpoint as plain arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from godiff_jax.geometry import clip_per_atom, confine
from godiff_jax.loss import boltzmann_weights
from godiff_jax.system import System


class Archive(NamedTuple):
    positions: jax.Array  # [C, M, 3] Å
    energies: jax.Array  # [C] eV (NaN where invalid)
    forces: jax.Array  # [C, M, 3] eV/Å on the mobile atoms
    valid: jax.Array  # [C] bool: filled, passed the distance check, finite energy
    iteration: jax.Array  # [C] int32, -1 for empty slots
    count: jax.Array  # [] int32, slots filled so far (valid or not)


class Buffer(NamedTuple):
    positions: jax.Array  # [K, M, 3] Å
    energies: jax.Array  # [K] eV
    forces: jax.Array  # [K, M, 3] eV/Å
    weights: jax.Array  # [K] Boltzmann weights over the buffer, 0 where not valid
    valid: jax.Array  # [K] bool
    index: jax.Array  # [K] int32 archive slot of each entry


def init_archive(capacity: int, n_mobile: int, dtype: jnp.dtype = jnp.float32) -> Archive:
    return Archive(
        positions=jnp.zeros((capacity, n_mobile, 3), dtype),
        energies=jnp.full((capacity,), jnp.nan, dtype),
        forces=jnp.zeros((capacity, n_mobile, 3), dtype),
        valid=jnp.zeros((capacity,), bool),
        iteration=jnp.full((capacity,), -1, jnp.int32),
        count=jnp.zeros((), jnp.int32),
    )


def add_to_archive(
    archive: Archive,
    positions: jax.Array,
    energies: jax.Array,
    forces: jax.Array,
    valid: jax.Array,
    iteration: int | jax.Array,
) -> Archive:
    """Append a batch of N evaluated structures at slot `count` (N static).

    The caller sizes the archive (iterations x samples); writing past the end would clamp,
    so `run` checks capacity up front instead of here (no host sync inside jit).
    """
    n = positions.shape[0]
    start = archive.count
    valid = valid & jnp.isfinite(energies)

    def put(dst, src):
        return jax.lax.dynamic_update_slice_in_dim(dst, src.astype(dst.dtype), start, axis=0)

    return Archive(
        positions=put(archive.positions, positions),
        energies=put(archive.energies, jnp.where(valid, energies, jnp.nan)),
        forces=put(archive.forces, jnp.where(valid[:, None, None], forces, 0.0)),
        valid=put(archive.valid, valid),
        iteration=put(archive.iteration, jnp.full((n,), iteration, jnp.int32)),
        count=archive.count + n,
    )


def weighted_sample_without_replacement(
    key: jax.Array, energies: jax.Array, valid: jax.Array, kT: float | jax.Array, k: int
) -> tuple[jax.Array, jax.Array]:
    """Efraimidis–Spirakis: keep the k largest u_i^(1/w_i), w_i ∝ exp(-(E_i - E_min)/kT).

    Ranked in log space as log(-log u_i) + (E_i - E_min)/kT (smallest first), which orders
    exactly like u^(1/w) but never underflows when w_i is tiny at low kT.
    Returns (indices [k], selected_valid [k]); invalid entries come last and are flagged.
    """
    u = jax.random.uniform(key, energies.shape, jnp.float32, minval=1e-12, maxval=1.0)
    e = jnp.where(valid, energies, jnp.inf)
    rank = jnp.log(-jnp.log(u)) + (e - jnp.min(e)) / kT
    rank = jnp.where(valid, rank, jnp.inf)
    _, idx = jax.lax.top_k(-rank, k)
    return idx, valid[idx]


def select_buffer(key: jax.Array, archive: Archive, kT: float | jax.Array, size: int) -> Buffer:
    """Redraw the training buffer from the whole archive at temperature kT (eV)."""
    idx, valid = weighted_sample_without_replacement(key, archive.energies, archive.valid, kT, size)
    energies = archive.energies[idx]
    return Buffer(
        positions=archive.positions[idx],
        energies=energies,
        forces=archive.forces[idx],
        weights=boltzmann_weights(energies, kT, valid),
        valid=valid,
        index=idx.astype(jnp.int32),
    )


def truncate_buffer(buffer: Buffer, size: jax.Array, kT: float | jax.Array) -> Buffer:
    """The first `size` (traced) entries of a buffer drawn at its capacity, the rest marked
    invalid, weights renormalised. The draw ranks the archive in the sampling order, so the
    first `size` are the same Efraimidis–Spirakis draw as one of that size."""
    valid = buffer.valid & (jnp.arange(buffer.valid.shape[0]) < size)
    return buffer._replace(valid=valid, weights=boltzmann_weights(buffer.energies, kT, valid))


def polish_buffer(system: System, buffer: Buffer, step: float, max_step: float) -> Buffer:
    """The buffer with each structure moved one steepest-descent step down its evaluated
    forces: x + step * F, each atom's move at most max_step Å, confined to the box.

    The forces come with every energy evaluation, so this costs none: the model learns
    structures nearer their local minima and its samples' single points come out lower. The
    energies (and so the weights) stay the evaluated ones. On the heptamer that brought the
    best energy found much closer to the minimum and found the minimum in fewer seeds: the
    search commits sooner to the first compact island (RESULTS.md section 43).
    """
    dx = clip_per_atom(step * buffer.forces, max_step)
    moved = jax.vmap(lambda x: confine(system, x))(buffer.positions + dx)
    return buffer._replace(
        positions=jnp.where(buffer.valid[:, None, None], moved, buffer.positions)
    )


def uniform_weights(buffer: Buffer) -> Buffer:
    """The buffer with weight 1 on every valid structure (the draw alone selects)."""
    return buffer._replace(weights=buffer.valid.astype(buffer.weights.dtype))
