"""Success tests for the built-in systems with any energy model (an ML potential, DFT).

The EMT tests in `analysis` compare with EMT's minimum. With another model the minimum
lies elsewhere in energy (and, a little, in position), so it is found once per run by
relaxing the reference structures with that model, template rigid:

- heptamer: the hexagonal island on the hcp and on the fcc hollows; the model's minimum is
  the lower. A candidate succeeds when its bond graph is the wheel (the paper's test) and,
  relaxed with the model, it ends within `tol` eV of that minimum (ours, stricter). If the
  reference relaxation does not converge, the test falls back to the graph alone and says so.
- adatom: the adatom on each of EMT's two minimum sites; the relaxed sites and the lower
  energy are the model's. A candidate succeeds within `tol_r` Å of a relaxed site or with a
  single point within `tol_e` eV of the model's minimum.

Without a relaxation (`structure_success_fn`): the heptamer by its bond graph alone (the
paper's test), the adatom by its distance to EMT's minimum sites alone. For calculators
whose relaxations would cost real evaluations (DFT through ASE), not counted by the run.

`relax(xs [B, M, 3]) -> (positions [B, M, 3], energies [B], converged [B])` is the model's
relaxer: `jax_relaxer` for a JAX energy, `ase_interop.ase_relaxer` for an ASE calculator.
Relaxations of candidates are not counted as evaluations (as in `analysis`), and on an
expensive model only the `max_relax` lowest wheel candidates of a batch are relaxed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from godiff_jax.analysis import (
    _is_wheel_batch,
    adatom_success,
    heptamer_island,
    stepped_pt_adatom_minimum_sites,
)
from godiff_jax.system import System

Relaxer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
logger = logging.getLogger(__name__)


class ModelMinimum(NamedTuple):
    energy: float  # eV, the model's energy of the relaxed reference structure
    positions: np.ndarray  # [K, M, 3] Å, the relaxed reference structures
    converged: bool


def jax_relaxer(energy_fn, fmax: float = 0.01, max_steps: int = 2000) -> Relaxer:
    """FIRE on a JAX energy of the mobile positions, a batch in one call."""
    from godiff_jax.relax import relax_batch

    def relax(xs):
        res = relax_batch(energy_fn, np.asarray(xs), fmax=fmax, max_steps=max_steps)
        return np.asarray(res.positions), np.asarray(res.energy), np.asarray(res.converged)

    return relax


def model_minimum(system_name: str, system: System, relax: Relaxer) -> ModelMinimum:
    """The model's own minimum of a built-in system, from its reference structures."""
    if system_name == "heptamer":
        starts = np.stack([heptamer_island(system, "hcp"), heptamer_island(system, "fcc")])
    elif system_name == "adatom":
        starts = stepped_pt_adatom_minimum_sites()[:, None, :]
    else:
        raise ValueError(f"no reference structures for system {system_name!r}")
    x, e, ok = relax(starts)
    if not np.all(np.isfinite(e)):
        raise ValueError(f"the model gives non-finite energies {e} at the reference structures")
    return ModelMinimum(float(np.min(e)), np.asarray(x), bool(np.all(ok)))


def model_success_fn(
    system_name: str,
    system: System,
    relax: Relaxer,
    tol: float = 0.05,
    tol_e: float = 0.1,
    tol_r: float = 0.3,
    max_relax: int | None = None,
):
    """f(positions [N, M, 3], energies [N], valid [N]) -> bool [N] for `runner.run`,
    measured against the model's own minimum (module docstring)."""
    ref = model_minimum(system_name, system, relax)
    logger.info("model minimum of %s: %.4f eV (converged: %s)", system_name, *ref[::2])
    if system_name == "adatom":
        sites = ref.positions[:, 0, :]

        def adatom(positions, energies, valid):
            hit = adatom_success(system, positions, energies, ref.energy, tol_e, tol_r, sites)
            return np.asarray(hit) & valid

        return adatom
    graph_only = not ref.converged
    if graph_only:
        logger.warning("the reference island did not converge: the graph test alone is used")

    def heptamer(positions, energies, valid):
        xs = np.asarray(positions)
        ok = np.asarray(_is_wheel_batch(system, xs)) & np.asarray(valid)
        if graph_only or not ok.any():
            return ok
        todo = np.flatnonzero(ok)
        todo = todo[np.argsort(np.asarray(energies)[todo])][:max_relax]
        _, e, _ = relax(xs[todo])
        strict = np.zeros_like(ok)
        strict[todo] = np.abs(e - ref.energy) <= tol
        return strict

    return heptamer


def structure_success_fn(system_name: str, system: System, tol_r: float = 0.3):
    """The tests that need no energy model: the heptamer's bond graph (the paper's test),
    the adatom within `tol_r` Å of one of EMT's minimum sites."""
    if system_name == "adatom":

        def adatom(positions, energies, valid):
            return np.asarray(adatom_success(system, positions, None, tol_r=tol_r)) & valid

        return adatom

    def heptamer(positions, energies, valid):
        return np.asarray(_is_wheel_batch(system, np.asarray(positions))) & np.asarray(valid)

    return heptamer
