"""Local relaxation with ASE's BFGS, in pure JAX.

`bfgs_relax(energy_fn, x0)` runs the quasi-Newton optimiser of ASE's `ase.optimize.BFGS`
(the local optimiser of AGOX's `LocalOptimizationEvaluator`) with its exact update and
defaults: initial Hessian `alpha` * I (70 eV/Å^2), the Hessian's BFGS update from the
last step and force change (skipped when no coordinate moved by 1e-7 Å), the step
V (V^T f / |omega|) from its eigen-decomposition, and the whole structure's step scaled so
that no atom moves more than `maxstep` (0.2 Å). Converged as in ASE: the largest per-atom
force norm is below `fmax`.

Like FIRE (`godiff_jax.relax`) it is an (init, step) pair, `bfgs_init` / `bfgs_step`, and
the step is also split at the energy evaluation (`bfgs_propose` gives the next positions,
`bfgs_update` takes their energy and forces), so a loop that evaluates once per step and
sometimes starts a new structure instead (`godiff_jax.baselines`) calls the energy model
once. `Constraint` plays the part of ASE's constraints: `adjust_positions(old, new)` after
every step (as `Atoms.set_positions` does) and `adjust_forces(x, forces)` on every force
the optimiser sees (as `Atoms.get_forces` does, so fmax is over the adjusted forces).
`energy_fn` is a function of the mobile positions only, so the template is fixed by
construction; that equals ASE with `FixAtoms` on the template (the Hessian stays block
diagonal, with the fixed block at alpha * I and never used). tests/test_baselines.py
checks it step for step against ASE.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from godiff_jax.relax import EnergyFn, EnergyForces, RelaxResult, energy_forces_fn, run_to_fmax


class Bfgs(NamedTuple):
    """ASE's BFGS constants."""

    maxstep: float = 0.2  # Å, largest step of any atom
    alpha: float = 70.0  # eV/Å^2, initial Hessian alpha * I


class Constraint(NamedTuple):
    """ASE-style constraint on the mobile atoms: positions [M, 3] Å, forces [M, 3] eV/Å."""

    adjust_positions: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]  # (old, new) -> new
    adjust_forces: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]  # (x, forces) -> forces


class BfgsState(NamedTuple):
    x: jnp.ndarray  # [M, 3] Å
    energy: jnp.ndarray  # [] eV at x
    forces: jnp.ndarray  # [M, 3] eV/Å at x, after the constraint's adjust_forces
    hessian: jnp.ndarray  # [3M, 3M] eV/Å^2
    step: jnp.ndarray  # [] int, steps taken


DEFAULT_BFGS = Bfgs()

# The energy function, the constraint and BFGS's constants shape the compiled loop.
_STATIC = ("energy_fn", "constraint", *Bfgs._fields)


def bfgs_start(x, energy, forces, bfgs: Bfgs = DEFAULT_BFGS) -> BfgsState:
    """BFGS's state at an already evaluated point (forces already adjusted)."""
    n = x.size
    return BfgsState(
        x=x,
        energy=energy,
        forces=forces,
        hessian=jnp.eye(n, dtype=x.dtype) * jnp.asarray(bfgs.alpha, x.dtype),
        step=jnp.asarray(0, jnp.int32),
    )


def _evaluate(energy_forces: EnergyForces, x, constraint: Constraint | None):
    e, f = energy_forces(x)
    if constraint is not None:
        f = constraint.adjust_forces(x, f)
    return e, f


def bfgs_init(
    energy_forces: EnergyForces,
    x0: jnp.ndarray,
    bfgs: Bfgs = DEFAULT_BFGS,
    constraint: Constraint | None = None,
) -> BfgsState:
    """BFGS's state at x0; the first half of an (init, step) pair."""
    e0, f0 = _evaluate(energy_forces, x0, constraint)
    return bfgs_start(x0, e0, f0, bfgs)


def bfgs_propose(
    s: BfgsState, bfgs: Bfgs = DEFAULT_BFGS, constraint: Constraint | None = None
) -> jnp.ndarray:
    """The positions [M, 3] of BFGS's next step from state `s` (no energy evaluated)."""
    omega, vectors = jnp.linalg.eigh(s.hessian)
    f = s.forces.reshape(-1)
    # ASE takes |omega|: a negative curvature still gives a step along the force.
    dr = (vectors @ ((f @ vectors) / jnp.abs(omega))).reshape(s.x.shape)
    longest = jnp.sqrt(jnp.max(jnp.sum(dr**2, axis=-1)))
    scale = jnp.where(longest >= bfgs.maxstep, bfgs.maxstep / jnp.maximum(longest, 1e-300), 1.0)
    x = s.x + dr * scale
    if constraint is not None:
        x = constraint.adjust_positions(s.x, x)
    return x


def bfgs_update(s: BfgsState, x, energy, forces) -> BfgsState:
    """The state after moving to x [M, 3] with its energy and (adjusted) forces."""
    dpos = (x - s.x).reshape(-1)
    dgrad = -(forces - s.forces).reshape(-1)
    a = dpos @ dgrad
    dg = s.hessian @ dpos
    b = dpos @ dg
    moved = jnp.max(jnp.abs(dpos)) >= 1e-7  # ASE skips the update for a repeated point
    safe_a = jnp.where(moved, a, 1.0)
    safe_b = jnp.where(moved, b, 1.0)
    updated = s.hessian + jnp.outer(dgrad, dgrad) / safe_a - jnp.outer(dg, dg) / safe_b
    return BfgsState(
        x=x,
        energy=energy,
        forces=forces,
        hessian=jnp.where(moved, updated, s.hessian),
        step=s.step + 1,
    )


def bfgs_step(
    s: BfgsState,
    energy_forces: EnergyForces,
    bfgs: Bfgs = DEFAULT_BFGS,
    constraint: Constraint | None = None,
) -> BfgsState:
    """One step of ASE's BFGS (one energy evaluation); usable inside a scan or while loop."""
    x = bfgs_propose(s, bfgs, constraint)
    e, f = _evaluate(energy_forces, x, constraint)
    return bfgs_update(s, x, e, f)


@functools.partial(jax.jit, static_argnames=_STATIC)
def bfgs_relax(
    energy_fn: EnergyFn,
    x0: jnp.ndarray,
    fmax: float = 0.05,
    max_steps: int = 1000,
    constraint: Constraint | None = None,
    *,
    maxstep: float = 0.2,
    alpha: float = 70.0,
) -> RelaxResult:
    """BFGS-relax `x0` [M, 3] until every atom's (adjusted) force is below `fmax` eV/Å.

    At most `max_steps` steps, so at most max_steps + 1 energy evaluations (the start and
    one after every step). `energy_fn` and `constraint` are static: pass the same objects
    to reuse the compiled program. Use `bfgs_relax_batch` for a batch.
    """
    x0 = jnp.asarray(x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(jnp.result_type(float))
    bfgs = Bfgs(maxstep, alpha)
    energy_forces = energy_forces_fn(energy_fn)
    return run_to_fmax(
        bfgs_init(energy_forces, x0, bfgs, constraint),
        lambda s: bfgs_step(s, energy_forces, bfgs, constraint),
        fmax,
        max_steps,
    )


def bfgs_relax_batch(
    energy_fn: EnergyFn,
    x0: jnp.ndarray,
    fmax: float = 0.05,
    max_steps: int = 1000,
    constraint: Constraint | None = None,
    **bfgs_kwargs,
) -> RelaxResult:
    """`bfgs_relax` vmapped over a leading batch axis: x0 [B, M, 3] -> RelaxResult of [B, ...].

    Under vmap each structure stops updating once it has converged or reached `max_steps`,
    so batched and per-structure results are identical.
    """
    return _bfgs_relax_batch(energy_fn, jnp.asarray(x0), fmax, max_steps, constraint, **bfgs_kwargs)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _bfgs_relax_batch(energy_fn, x0, fmax, max_steps, constraint, **bfgs_kwargs):
    def one(x):
        return bfgs_relax(energy_fn, x, fmax, max_steps, constraint, **bfgs_kwargs)

    return jax.vmap(one)(x0)
