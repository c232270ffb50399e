"""Energy evaluators: a batch of structures and a validity mask in, energies, forces,
validity and a reason for every invalid structure out.

Two kinds fill the same protocol (`Evaluator`):

- `JaxEvaluator(energy_fn)`: a JAX energy model (the embedded EMT, LJ, later MACE). Its
  `batch` is pure and runs inside the search's jitted program; called on the host it
  evaluates a batch in one jitted call.
- `AseEvaluator(calculator, executor)`: any ASE calculator, one task per structure on a
  `concurrent.futures.Executor` (a process pool on this machine by default), results taken
  as they complete; a Dask or Parsl executor slots in without touching the search.

Results already known (from the database, on resume) are passed in as `known` and not
recomputed; `on_result(index, result)` is called for each new result as soon as it is
known, so that a caller can write it at once.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import logging
import multiprocessing
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np

from godiff_jax.ase_interop import to_atoms
from godiff_jax.system import System

# energy_fn(mobile_positions [M, 3] Å) -> total energy (eV); forces come from jax.grad.
EnergyFn = Callable[[jax.Array], jax.Array]

logger = logging.getLogger(__name__)
REJECTED = "rejected before evaluation (closer than min_distance or non-finite)"
NONFINITE = "non-finite energy or forces"


class Result(NamedTuple):
    """One structure's evaluation: energy (eV, NaN if failed), forces [M, 3] (eV/Å) and
    why it failed (None when it did not)."""

    energy: float
    forces: np.ndarray
    reason: str | None = None


class Evaluation(NamedTuple):
    energies: np.ndarray  # [N] eV, NaN where not valid
    forces: np.ndarray  # [N, M, 3] eV/Å, zero where not valid
    valid: np.ndarray  # [N] bool
    reasons: tuple[str | None, ...]  # [N] None where valid


OnResult = Callable[[int, Result], None]


class Evaluator(Protocol):
    def __call__(
        self,
        system: System,
        positions: np.ndarray,
        valid: np.ndarray,
        known: Mapping[int, Result] | None = None,
        on_result: OnResult | None = None,
    ) -> Evaluation: ...


def _checked(system: System, positions, valid) -> tuple[np.ndarray, np.ndarray]:
    xs = np.asarray(positions, dtype=float)
    if xs.ndim == 2:
        xs = xs[None]
    if xs.ndim != 3 or xs.shape[1:] != (system.n_mobile, 3):
        raise ValueError(
            f"mobile positions must have shape (N, {system.n_mobile}, 3), got {xs.shape}"
        )
    ok = np.broadcast_to(np.asarray(valid, bool), xs.shape[:1])
    return xs, ok


def _assemble(n: int, m: int, results: dict[int, Result], valid: np.ndarray) -> Evaluation:
    energies = np.full(n, np.nan)
    forces = np.zeros((n, m, 3))
    ok = np.zeros(n, bool)
    reasons: list[str | None] = [None if v else REJECTED for v in valid]
    for i, r in results.items():
        if r.reason is None:
            energies[i], forces[i], ok[i] = r.energy, r.forces, True
        else:
            reasons[i] = r.reason
    return Evaluation(energies, forces, ok, tuple(reasons))


def _finite(energy: float, forces: np.ndarray) -> str | None:
    return None if np.isfinite(energy) and np.all(np.isfinite(forces)) else NONFINITE


@dataclasses.dataclass(frozen=True)
class JaxEvaluator:
    """A JAX energy model as an evaluator; `batch` is the in-jit form."""

    energy_fn: EnergyFn

    def batch(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Energies [N] (eV) and forces [N, M, 3] (eV/Å) of every structure (pure JAX)."""
        e, g = jax.vmap(jax.value_and_grad(self.energy_fn))(x)
        return e, -g

    def __call__(self, system, positions, valid, known=None, on_result=None) -> Evaluation:
        xs, ok = _checked(system, positions, valid)
        known = dict(known or {})
        todo = [i for i in np.flatnonzero(ok) if i not in known]
        results = {i: known[i] for i in np.flatnonzero(ok) if i in known}
        if todo:
            e, f = jax.device_get(_jit_batch(self)(xs[todo]))
            for i, ei, fi in zip(todo, np.asarray(e, float), np.asarray(f, float), strict=True):
                r = Result(float(ei), fi, _finite(float(ei), fi))
                results[int(i)] = r
                if on_result is not None:
                    on_result(int(i), r)
        return _assemble(len(xs), system.n_mobile, results, ok)


_JITTED: dict[JaxEvaluator, Callable] = {}


def _jit_batch(evaluator: JaxEvaluator) -> Callable:
    if evaluator not in _JITTED:
        _JITTED[evaluator] = jax.jit(evaluator.batch)
    return _JITTED[evaluator]


def structure_energy_forces(system: System, x: np.ndarray, calculator: Any):
    """Energy (eV) and mobile forces [M, 3] (eV/Å) of one structure; raises what the
    calculator raises."""
    calculator.reset()
    atoms = to_atoms(system, x)
    atoms.calc = calculator
    e = float(atoms.get_potential_energy())
    f = np.asarray(atoms.get_forces(apply_constraint=False), dtype=float)[system.n_template :]
    return e, f


def evaluate_one(system: System, x: np.ndarray, calculator: Any) -> Result:
    """One structure with an ASE calculator; any failure is a Result with its reason."""
    try:
        e, f = structure_energy_forces(system, x, calculator)
    except Exception as err:  # any calculator failure marks the structure invalid
        return Result(np.nan, np.zeros((system.n_mobile, 3)), f"{type(err).__name__}: {err}")
    reason = _finite(e, f)
    if reason is not None:
        reason = f"{reason} (energy {e})"
    return Result(e, f, reason)


# run(system, positions [N, M, 3], indices to compute, done(index, Result)) -> None
HostRun = Callable[[System, np.ndarray, list, OnResult], None]


def evaluate_host(system, positions, valid, known, on_result, run: HostRun, name: str):
    """The protocol's bookkeeping for host evaluators: skip invalid and known structures,
    let `run` compute the rest (reporting each result through `done`), warn on failures."""
    xs, ok = _checked(system, positions, valid)
    known = dict(known or {})
    results = {int(i): known[i] for i in np.flatnonzero(ok) if i in known}
    todo = [int(i) for i in np.flatnonzero(ok) if i not in known]

    def done(i: int, r: Result) -> None:
        results[i] = r
        if on_result is not None:
            on_result(i, r)

    run(system, xs, todo, done)
    failed = sorted(i for i in todo if results[i].reason is not None)
    if failed:
        msg = (
            f"{len(failed)} of {len(todo)} structures failed with {name} and are marked "
            f"invalid; first error: structure {failed[0]}: {results[failed[0]].reason}"
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        logger.warning(msg)
    return _assemble(len(xs), system.n_mobile, results, ok)


class AseEvaluator:
    """An ASE calculator as an evaluator, one task per structure on an Executor.

    `executor`: any `concurrent.futures.Executor` (the caller owns it); by default a
    process pool of `n_workers` (default: the CPU count) spawned processes, made on first
    use and shut down by `close()`; `n_workers=1` evaluates in this process, in order.
    Each task gets its own copy of the calculator (pickled for processes, a deep copy for
    threads: ASE calculators are not thread-safe). For a cluster, retries and time limits
    see `godiff_jax.dask_evaluator.DaskEvaluator`.
    """

    def __init__(
        self,
        calculator: Any,
        executor: concurrent.futures.Executor | None = None,
        n_workers: int | None = None,
    ):
        self.calculator = calculator
        self._executor = executor
        self._own = executor is None
        self.n_workers = n_workers or os.cpu_count() or 1

    def _pool(self) -> concurrent.futures.Executor | None:
        if self._executor is None and self.n_workers > 1:
            ctx = multiprocessing.get_context("spawn")
            self._executor = concurrent.futures.ProcessPoolExecutor(self.n_workers, mp_context=ctx)
        return self._executor

    def close(self) -> None:
        if self._own and self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def __enter__(self) -> AseEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, system, positions, valid, known=None, on_result=None) -> Evaluation:
        name = type(self.calculator).__name__
        return evaluate_host(system, positions, valid, known, on_result, self._run, name)

    def _run(self, system: System, xs: np.ndarray, todo: list[int], done: OnResult) -> None:
        pool = self._pool() if len(todo) > 1 else None
        if pool is None:
            for i in todo:
                done(i, evaluate_one(system, xs[i], self.calculator))
            return
        # A process gets its own pickled copy; threads share memory, and an ASE
        # calculator is not thread-safe, so each task gets a deep copy.
        own = isinstance(pool, concurrent.futures.ProcessPoolExecutor)
        futures = {
            pool.submit(
                evaluate_one,
                system,
                xs[i],
                self.calculator if own else copy.deepcopy(self.calculator),
            ): i
            for i in todo
        }
        for fut in concurrent.futures.as_completed(futures):
            done(futures[fut], fut.result())


def evaluate_with_calculator(
    system: System,
    mobile_positions,
    calculator: Any,
    n_workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Energies [B] (eV), mobile forces [B, M, 3] (eV/Å) and valid [B] with an ASE calculator.

    `mobile_positions` is [B, M, 3] (or one [M, 3] structure, treated as B = 1). A structure
    whose calculation raises, or gives a non-finite energy or forces, is invalid: energy
    NaN, forces zero, and the batch goes on; a warning says how many failed and the first
    error. `n_workers > 1` spreads the batch over a pool of processes (spawned, each with
    a pickled copy of the calculator): worth it only for expensive calculators. It is
    `AseEvaluator` on one batch.
    """
    xs = np.asarray(mobile_positions, dtype=float)
    if xs.ndim == 2:
        xs = xs[None]
    with AseEvaluator(calculator, n_workers=max(1, n_workers or 1)) as evaluator:
        out = evaluator(system, xs, np.ones(len(xs), bool))
    return out.energies, out.forces, out.valid
