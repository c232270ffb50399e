"""Local relaxation of mobile atoms with FIRE, in pure JAX.

`relax(energy_fn, x0)` runs the FIRE optimiser of Bitzek et al. (2006) with the exact update
and default parameters of ASE's `ase.optimize.FIRE` (dt 0.1, maxstep 0.2 Å, dtmax 1.0,
Nmin 5, finc 1.1, fdec 0.5, astart 0.1, fa 0.99) inside one `lax.while_loop`, so it jits and
vmaps: `relax_batch` relaxes a whole batch of starting structures in one call (under vmap
each structure stops updating once it has converged, so batched and per-structure results
are identical). `energy_fn` is a function of the mobile positions only, so the template
stays fixed by construction. Time units are ASE's (eV, Å, unit mass).

FIRE is also an (init, step) pair, `fire_init` / `fire_step`, for use inside a scan (a
corrector, a relaxation of fixed length). It is our own rather than jax-md's
`minimize.fire_descent`: jax-md's FIRE is the MD-integrator form (velocity Verlet with
masses, its own step control and no per-structure maximum step), while ASE's variant,
which AGOX and the paper's reference energies use, mixes velocities before a plain Euler
step and caps the whole structure's step at `maxstep`; matching ASE step for step is what
the tests check (tests/test_relax.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

EnergyFn = Callable[[jnp.ndarray], jnp.ndarray]


class RelaxResult(NamedTuple):
    positions: jnp.ndarray  # [M, 3] Å, final positions
    energy: jnp.ndarray  # [] eV at `positions`
    fmax: jnp.ndarray  # [] eV/Å, largest per-atom force norm at `positions`
    n_steps: jnp.ndarray  # [] int, FIRE steps taken
    converged: jnp.ndarray  # [] bool, fmax < requested fmax


class FireState(NamedTuple):
    x: jnp.ndarray
    v: jnp.ndarray
    energy: jnp.ndarray
    forces: jnp.ndarray
    dt: jnp.ndarray
    a: jnp.ndarray
    n_pos: jnp.ndarray  # ASE's `Nsteps`: steps since the last uphill (P <= 0) reset
    step: jnp.ndarray


class Fire(NamedTuple):
    """ASE's FIRE constants (time in ASE units: eV, Å, unit mass)."""

    dt: float = 0.1
    maxstep: float = 0.2  # Å, largest step of the whole structure
    dtmax: float = 1.0
    n_min: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99


EnergyForces = Callable[[jnp.ndarray], tuple[jnp.ndarray, jnp.ndarray]]

# The energy function, the confinement and FIRE's constants shape the compiled loop.
_STATIC = ("energy_fn", "confine", *Fire._fields)


def _max_force(forces: jnp.ndarray) -> jnp.ndarray:
    return jnp.sqrt(jnp.max(jnp.sum(forces**2, axis=-1)))


def energy_forces_fn(energy_fn: EnergyFn) -> EnergyForces:
    """x -> (energy, forces = -grad energy)."""
    value_and_grad = jax.value_and_grad(energy_fn)

    def energy_forces(x):
        e, g = value_and_grad(x)
        return e, -g

    return energy_forces


def fire_init(energy_forces: EnergyForces, x0: jnp.ndarray, fire: Fire = Fire()) -> FireState:
    """FIRE's state at x0 (velocity zero); the first half of an (init, step) pair."""
    e0, f0 = energy_forces(x0)
    dtype = x0.dtype
    return FireState(
        x=x0,
        v=jnp.zeros_like(x0),
        energy=e0,
        forces=f0,
        dt=jnp.asarray(fire.dt, dtype),
        a=jnp.asarray(fire.astart, dtype),
        n_pos=jnp.asarray(0, jnp.int32),
        step=jnp.asarray(0, jnp.int32),
    )


def fire_step(
    s: FireState,
    energy_forces: EnergyForces,
    fire: Fire = Fire(),
    confine: Callable[[jnp.ndarray], jnp.ndarray] | None = None,
) -> FireState:
    """One step of ASE's FIRE (its exact update); usable inside a scan or while loop."""
    dtype = s.x.dtype
    f = s.forces
    vf = jnp.vdot(f, s.v)
    f_norm = jnp.sqrt(jnp.vdot(f, f))
    v_norm = jnp.sqrt(jnp.vdot(s.v, s.v))
    # ASE skips the P = F.v test on the very first step (its velocity is still None).
    first = s.step == 0
    downhill = vf > 0.0
    mixed = (1.0 - s.a) * s.v + s.a * f / jnp.where(f_norm > 0, f_norm, 1.0) * v_norm
    grow = s.n_pos > fire.n_min
    v_down = mixed
    dt_down = jnp.where(grow, jnp.minimum(s.dt * fire.finc, fire.dtmax), s.dt)
    a_down = jnp.where(grow, s.a * fire.fa, s.a)
    v = jnp.where(first, s.v, jnp.where(downhill, v_down, jnp.zeros_like(s.v)))
    dt_new = jnp.where(first, s.dt, jnp.where(downhill, dt_down, s.dt * fire.fdec))
    a_new = jnp.where(first, s.a, jnp.where(downhill, a_down, jnp.asarray(fire.astart, dtype)))
    n_pos = jnp.where(first, s.n_pos, jnp.where(downhill, s.n_pos + 1, 0))

    v = v + dt_new * f
    dr = dt_new * v
    norm_dr = jnp.sqrt(jnp.vdot(dr, dr))
    dr = jnp.where(norm_dr > fire.maxstep, dr * (fire.maxstep / jnp.maximum(norm_dr, 1e-300)), dr)
    x = s.x + dr
    if confine is not None:
        x = confine(x)
    e, forces = energy_forces(x)
    return FireState(
        x=x,
        v=v,
        energy=e,
        forces=forces,
        dt=dt_new,
        a=a_new,
        n_pos=n_pos.astype(jnp.int32),
        step=s.step + 1,
    )


@functools.partial(jax.jit, static_argnames=_STATIC)
def relax(
    energy_fn: EnergyFn,
    x0: jnp.ndarray,
    fmax: float = 0.01,
    max_steps: int = 2000,
    confine: Callable[[jnp.ndarray], jnp.ndarray] | None = None,
    *,
    dt: float = 0.1,
    maxstep: float = 0.2,
    dtmax: float = 1.0,
    n_min: int = 5,
    finc: float = 1.1,
    fdec: float = 0.5,
    astart: float = 0.1,
    fa: float = 0.99,
) -> RelaxResult:
    """FIRE-relax `x0` [M, 3] until every atom's force is below `fmax` eV/Å.

    Converged as in ASE: the largest per-atom force norm is < `fmax`; at most `max_steps`
    steps. `confine` (e.g. `system.confine`) is applied to the positions after every step.
    `energy_fn` and `confine` are static: pass the same function objects to reuse the
    compiled program. FIRE's constants (`Fire` fields) are keywords. Use `relax_batch`
    (or `jax.vmap` over a closure) for a batch.
    """
    x0 = jnp.asarray(x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(jnp.result_type(float))
    fire = Fire(dt, maxstep, dtmax, n_min, finc, fdec, astart, fa)
    energy_forces = energy_forces_fn(energy_fn)
    return run_to_fmax(
        fire_init(energy_forces, x0, fire),
        lambda s: fire_step(s, energy_forces, fire, confine),
        fmax,
        max_steps,
    )


def run_to_fmax(state, step: Callable, fmax, max_steps: int) -> RelaxResult:
    """Apply `step` to `state` (any optimiser state with x, energy, forces and step fields)
    in a `lax.while_loop` until the largest per-atom force is below `fmax` or `max_steps`
    steps are taken; FIRE here and BFGS (`godiff_jax.bfgs`) share it."""
    fmax = jnp.asarray(fmax, state.x.dtype)

    def cond(s):
        return (_max_force(s.forces) >= fmax) & (s.step < max_steps)

    s = jax.lax.while_loop(cond, step, state)
    final_fmax = _max_force(s.forces)
    return RelaxResult(
        positions=s.x,
        energy=s.energy,
        fmax=final_fmax,
        n_steps=s.step,
        converged=final_fmax < fmax,
    )


def relax_batch(
    energy_fn: EnergyFn,
    x0: jnp.ndarray,
    fmax: float = 0.01,
    max_steps: int = 2000,
    confine: Callable[[jnp.ndarray], jnp.ndarray] | None = None,
    **fire_kwargs,
) -> RelaxResult:
    """`relax` vmapped over a leading batch axis: x0 [B, M, 3] -> RelaxResult of [B, ...]."""
    return _relax_batch(energy_fn, jnp.asarray(x0), fmax, max_steps, confine, **fire_kwargs)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _relax_batch(energy_fn, x0, fmax, max_steps, confine, **fire_kwargs):
    def one(x):
        return relax(energy_fn, x, fmax, max_steps, confine, **fire_kwargs)

    return jax.vmap(one)(x0)
