"""Bridges between `System` / JAX energy models and ASE.

- `to_atoms` / `from_atoms`: mobile positions <-> `ase.Atoms` (template fixed with
  `FixAtoms`, energy and forces attached as a `SinglePointCalculator`).
- `JaxCalculator`: any JAX energy model of generic atoms as an ASE calculator, compiled once
  per (numbers, cell, pbc) and reused; `EMTCalculator()` is the JAX EMT as a drop-in for
  ASE's `EMT()`; `MACECalculator(path)` a converted MACE model (`godiff convert-mace`).

Evaluating batches with an ASE calculator is `godiff_jax.evaluate.AseEvaluator`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import ase
import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from godiff_jax.system import System

EnergyFactory = Callable[[np.ndarray, np.ndarray, np.ndarray], Callable[[jnp.ndarray], Any]]


# --------------------------------------------------------------------------------------
# System <-> Atoms
# --------------------------------------------------------------------------------------


def to_atoms(
    system: System,
    mobile_positions,
    energy: float | None = None,
    forces=None,
    info: Mapping[str, Any] | None = None,
) -> ase.Atoms:
    """Template + mobile atoms as `ase.Atoms` with the system's cell and pbc.

    Every template atom is fixed (`FixAtoms`). With `energy` (eV) and/or `forces` (eV/Å,
    [n_mobile, 3] or [n_atoms, 3]; mobile-only forces get zero rows on the template) a
    `SinglePointCalculator` holds them. `info` is copied into `atoms.info`.
    """
    x = np.asarray(mobile_positions, dtype=float)
    if x.shape != (system.n_mobile, 3):
        raise ValueError(
            f"mobile positions must have shape ({system.n_mobile}, 3) for system "
            f"{system.name!r}, got {x.shape}"
        )
    positions = np.concatenate([np.asarray(system.template_positions, float), x], axis=0)
    atoms = ase.Atoms(numbers=system.numbers, positions=positions, cell=system.cell, pbc=system.pbc)
    if system.n_template:
        atoms.set_constraint(FixAtoms(indices=np.arange(system.n_template)))
    if info:
        atoms.info.update(dict(info))
    results: dict[str, Any] = {}
    if energy is not None:
        results["energy"] = float(energy)
        results["free_energy"] = float(energy)
    if forces is not None:
        f = np.asarray(forces, dtype=float)
        if f.shape == (system.n_mobile, 3):
            f = np.concatenate([np.zeros((system.n_template, 3)), f], axis=0)
        elif f.shape != (system.n_atoms, 3):
            raise ValueError(
                f"forces must have shape ({system.n_mobile}, 3) (mobile) or "
                f"({system.n_atoms}, 3) (all atoms), got {f.shape}"
            )
        results["forces"] = f
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def ase_relaxer(system: System, calculator: Any, fmax: float = 0.01, max_steps: int = 2000):
    """A relaxer for `model_success`: ASE's FIRE on `calculator`, template fixed, one
    structure after another (host side, not counted as evaluations)."""
    from ase.optimize import FIRE

    def relax(xs):
        xs = np.asarray(xs, dtype=float)
        out, energies, converged = np.array(xs, copy=True), np.full(len(xs), np.nan), []
        for k, x in enumerate(xs):
            atoms = to_atoms(system, x)
            calculator.reset()
            atoms.calc = calculator
            try:
                converged.append(bool(FIRE(atoms, logfile=None).run(fmax=fmax, steps=max_steps)))
                energies[k] = atoms.get_potential_energy()
                out[k] = atoms.positions[system.n_template :]
            except Exception:  # a failed relaxation is not a success; the run goes on
                converged.append(False)
        return out, energies, np.asarray(converged)

    return relax


def from_atoms(system: System, atoms: ase.Atoms, atol: float = 1e-4) -> np.ndarray:
    """Mobile positions [n_mobile, 3] (Å) of `atoms`, checked against the system.

    `atoms` must hold the template first (same species, positions within `atol` Å), then
    the mobile atoms in the system's order; anything else raises `ValueError`.
    """
    where = f"atoms {atoms.get_chemical_formula()!r} do not match system {system.name!r}"
    if len(atoms) != system.n_atoms:
        raise ValueError(
            f"{where}: {len(atoms)} atoms, the system has {system.n_atoms} "
            f"({system.n_template} template + {system.n_mobile} mobile)"
        )
    numbers = np.asarray(atoms.numbers)
    bad = np.flatnonzero(numbers != system.numbers)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{where}: species differ at {bad.size} atoms, first at index {i} "
            f"(atoms has Z={numbers[i]}, system has Z={system.numbers[i]}); the template "
            "must come first, then the mobile atoms in the system's order"
        )
    pos = np.asarray(atoms.positions, dtype=float)
    if system.n_template:
        dev = np.linalg.norm(pos[: system.n_template] - system.template_positions, axis=1)
        if dev.max() > atol:
            i = int(np.argmax(dev))
            raise ValueError(
                f"{where}: template atom {i} is {dev[i]:.3g} Å from the system's template "
                f"(tolerance {atol} Å)"
            )
    return pos[system.n_template :].copy()


# --------------------------------------------------------------------------------------
# JAX energy models as ASE calculators
# --------------------------------------------------------------------------------------

_CACHE_SIZE = 32
_cache: OrderedDict = OrderedDict()
_cache_lock = threading.Lock()


def _cache_key(factory, numbers, cell, pbc):
    return (
        factory,
        tuple(int(z) for z in numbers),
        np.asarray(cell, dtype=float).round(10).tobytes(),
        tuple(bool(p) for p in pbc),
    )


class _Compiled:
    """A jitted value_and_grad of one energy function and how often it was traced."""

    def __init__(self, energy):
        self.n_traces = 0

        def counted(positions):
            self.n_traces += 1  # runs only while tracing: counts compilations, not calls
            return energy(positions)

        self.fn = jax.jit(jax.value_and_grad(counted))


class JaxCalculator(Calculator):
    """ASE calculator for a JAX energy model of generic atoms.

    `make_energy(numbers, cell, pbc) -> energy(positions[N, 3]) -> eV` is called once per
    (numbers, cell, pbc); its `jax.jit(jax.value_and_grad(energy))` is cached (module-wide,
    shared by every calculator with the same factory) so relaxations and MD, which call it
    again and again with new positions, compile once. Energies and forces come back as
    numpy float64; they are float64 accurate only with `jax_enable_x64` on.

    `n_builds` counts the cache misses of this calculator (calls of `make_energy`),
    `n_traces` the traces (compilations) that happened during its calculations.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, make_energy: EnergyFactory, float64: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.make_energy = make_energy
        # ASE users expect EMT()'s double precision, whatever the process's x64 setting.
        self.float64 = float64
        self.n_builds = 0
        self.n_traces = 0

    def __getstate__(self):  # picklable for process pools; compiled code stays behind
        state = self.__dict__.copy()
        state["atoms"] = None
        return state

    def _entry(self, atoms: ase.Atoms) -> _Compiled:
        key = _cache_key(self.make_energy, atoms.numbers, atoms.cell.array, atoms.pbc)
        with _cache_lock:
            entry = _cache.get(key)
            if entry is not None:
                _cache.move_to_end(key)
                return entry
        self.n_builds += 1
        energy = self.make_energy(
            np.asarray(atoms.numbers).copy(),
            np.asarray(atoms.cell.array, dtype=float).copy(),
            np.asarray(atoms.pbc, dtype=bool).copy(),
        )
        entry = _Compiled(energy)
        with _cache_lock:
            _cache[key] = entry
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        return entry

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        entry = self._entry(self.atoms)
        before = entry.n_traces
        with jax.enable_x64(self.float64 or bool(jax.config.jax_enable_x64)):
            dtype = jnp.result_type(float)
            energy, grad = entry.fn(jnp.asarray(self.atoms.positions, dtype=dtype))
        self.n_traces += entry.n_traces - before
        energy = float(np.asarray(energy, dtype=np.float64))
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = -np.asarray(grad, dtype=np.float64)


def _emt_factory(numbers, cell, pbc):
    from godiff_jax.potentials.emt import make_emt_energy

    return make_emt_energy(numbers, cell, pbc)


def EMTCalculator(**kwargs) -> JaxCalculator:  # noqa: N802 (mirrors ase's EMT())
    """The JAX EMT as an ASE calculator: a drop-in for `ase.calculators.emt.EMT()`."""
    return JaxCalculator(_emt_factory, **kwargs)


class MACECalculator(Calculator):
    """A converted MACE model (`godiff convert-mace`) as an ASE calculator, in JAX.

    `model`: the converted file's path or a loaded `MaceModel`. One
    `godiff_jax.potentials.mace.MacePotential` per (numbers, cell, pbc): its padded
    neighbour list is sized on the first structure and reallocated (one recompilation)
    when a later structure needs more edges, so relaxations and MD compile once or twice.
    Energies in eV and forces in eV/Å come back as numpy float64 (computed in float64
    unless `float64=False`).
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, model, float64: bool = True, **kwargs):
        super().__init__(**kwargs)
        from godiff_jax.potentials.mace import load_mace

        self.model = load_mace(model) if isinstance(model, str) else model
        self.float64 = float64
        self._potentials: dict = {}

    def __getstate__(self):  # picklable for process pools; compiled code stays behind
        state = self.__dict__.copy()
        state["atoms"] = None
        state["_potentials"] = {}
        return state

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from godiff_jax.potentials.mace import MacePotential

        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        key = _cache_key(None, a.numbers, a.cell.array, a.pbc)
        if key not in self._potentials:
            self._potentials[key] = MacePotential(
                self.model, a.numbers.copy(), a.cell.array.copy(), a.pbc.copy()
            )
        with jax.enable_x64(self.float64 or bool(jax.config.jax_enable_x64)):
            dtype = jnp.result_type(float)
            energy, forces = self._potentials[key](jnp.asarray(a.positions, dtype=dtype))
        self.results["energy"] = float(energy)
        self.results["free_energy"] = float(energy)
        self.results["forces"] = np.asarray(forces, dtype=np.float64)
