"""A whole run from a TOML file: the system, the energy model, the search settings, outputs.

    preset = "paper"                  # the paper's settings instead of the default (optional;
                                      # a list adds overlays: ["paper", "reference"])
    n_iterations = 20                 # the search: SearchConfig's sections, same names as --set
    [sampler]    n_samples = 128
    [buffer]     kT_start = 5.0
    [training]   train_steps = 8000
    [model]      features = 64

    [system]                          # a built-in system ...
    builtin = "heptamer"              # heptamer | adatom
    # ... or a slab of your own: template = "slab.extxyz", mobile = "Pt7", z_range = [1, 6]
    # ... or a gas-phase cluster:  mobile = "Pt13", box = 8.0 (Å, or [x, y, z]), vacuum = 10.0

    [energy]
    model = "emt"                     # emt | lj | sevennet | chgnet | mace:PATH | ase:module.Class
    # mace:PATH: a file of `godiff convert-mace` (relative to this file), inside jit
    # lj: epsilon, sigma, cutoff; the others: [energy.kwargs] for the calculator class,
    # n_workers (processes on this machine), floor_per_atom (eV; false: no floor)
    [energy.dask]                     # host calculators on a Dask cluster instead
    scheduler = "tcp://host:8786"     # optional; default a local cluster of n_workers
    retries = 1                       # further attempts of a structure whose task raised
    time_limit = 3600                 # s a structure may take before it is cancelled

    [run]
    workdir = "runs/heptamer"
    seeds = 1                         # how many, from first_seed
    first_seed = 0

Everything is checked before any work starts (`load_run`); each problem is a `ConfigError`
naming the field and what was expected. The search settings default to the heptamer's
default settings (`godiff_jax.config.DEFAULT_SETTINGS`), or, for a built-in system, to that
system's; `preset = "paper"` starts from the paper's settings instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import math
import tomllib
import typing
from pathlib import Path
from typing import Any

import numpy as np

from godiff_jax.config import (
    DEFAULT_SETTINGS,
    PAPER_SETTINGS,
    SECTIONS,
    SearchConfig,
    field_names,
    field_type,
    with_presets,
)
from godiff_jax.system import (
    System,
    make_cluster_system,
    make_surface_system,
    pt111_heptamer,
    stepped_pt_adatom,
)


class ConfigError(ValueError):
    """A problem with the user's run configuration; the message names the field."""


BUILTIN = {"heptamer": pt111_heptamer, "adatom": stepped_pt_adatom}
ENERGY_MODELS = {
    "emt": "ASE's EMT in JAX (Al Cu Ag Au Ni Pd Pt H C N O), inside jit",
    "lj": "Lennard-Jones (epsilon, sigma, cutoff), any element, inside jit",
    "sevennet": "SevenNet-0 (pip install 'godiff_jax[sevennet]'), ASE calculator on the host",
    "chgnet": "CHGNet (pip install 'godiff_jax[chgnet]'), ASE calculator on the host",
    "mace:PATH": "a MACE model converted by `godiff convert-mace` (MACE-MP-0), inside jit",
    "ase:module.Class": "any ASE calculator class, on the host ([energy.kwargs], n_workers)",
}
# The universal potentials: their ASE calculator and default keyword arguments.
ML_POTENTIALS = {
    "sevennet": ("sevenn.calculator.SevenNetCalculator", {"model": "7net-0", "device": "cpu"}),
    "chgnet": ("chgnet.model.dynamics.CHGNetCalculator", {"use_device": "cpu"}),
}
# Energy floor of the universal potentials, per atom of the whole system: a structure
# below it is masked as a hole of the potential. It scales with the system (the reference
# code's fixed -500 eV for the heptamer would mask every structure of a system 2x larger)
# and lies below the per-atom energy of every element's ground state in the PBE energies
# these models are trained on (the lowest, the 5d metals W, Re, Os, near -13 eV/atom).
DEFAULT_FLOOR_PER_ATOM = -15.0
_TOP = {"preset", "n_iterations", "system", "energy", "run", *SECTIONS}
_SYSTEM_KEYS = {"builtin", "template", "mobile", "z_range", "box", "vacuum", "name"}
_ENERGY_KEYS = {
    "model", "epsilon", "sigma", "cutoff", "kwargs", "n_workers", "asap_cutoff",
    "floor_per_atom", "dask",
}  # fmt: skip
_DASK_KEYS = {"scheduler", "n_workers", "retries", "time_limit"}
_RUN_KEYS = {"workdir", "seeds", "first_seed"}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    system: System
    system_name: str  # "heptamer", "adatom" or the user's
    config: SearchConfig
    energy: dict  # the [energy] table, checked
    workdir: Path
    seeds: list[int]
    source: dict  # the TOML as read (written to the run directory as run.toml's record)


def _unknown(key: str, known: set[str], where: str) -> ConfigError:
    near = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint} (known: {', '.join(sorted(known))})")


def _check_keys(table: dict, known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            raise _unknown(key, known, where)


def _typed(value: Any, declared: Any, name: str) -> Any:
    """The TOML value checked against the declared type (int where float is declared is fine)."""
    options = typing.get_args(declared) or (declared,)
    if value is None and type(None) in options:
        return None
    for kind in options:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    names = " or ".join(getattr(k, "__name__", str(k)) for k in options)
    raise ConfigError(f"{name}: expected {names}, got {value!r} ({type(value).__name__})")


_POSITIVE = {
    "n_iterations", "n_samples", "n_reverse_steps", "buffer_size", "batch_size",
    "train_steps", "features", "n_blocks", "n_rbf", "cutoff", "learning_rate",
    "kT_start", "kT_end", "sigma_max", "sigma_min", "t_end", "grid_spacing",
}  # fmt: skip


def search_settings(data: dict, base: SearchConfig) -> SearchConfig:
    """The TOML's search part (top-level n_iterations and the config sections) over `base`."""
    names: dict[str, Any] = {}
    if "n_iterations" in data:
        names["n_iterations"] = data["n_iterations"]
    for section, cls in SECTIONS.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table, got {table!r}")
        _check_keys(table, {f.name for f in dataclasses.fields(cls)}, f"[{section}]")
        names.update({f"{section}.{k}": v for k, v in table.items()})
    checked = {}
    for name, value in names.items():
        value = _typed(value, field_type(name), name)
        leaf = name.rpartition(".")[2]
        if leaf in _POSITIVE and value is not None and not value > 0:
            raise ConfigError(f"{name}: must be positive, got {value}")
        checked[name] = value
    try:
        return base.replace(**checked)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def _system(table: dict, base_dir: Path) -> tuple[System, str]:
    _check_keys(table, _SYSTEM_KEYS, "[system]")
    if "builtin" in table:
        name = table["builtin"]
        if name not in BUILTIN:
            raise _unknown(str(name), set(BUILTIN), "[system] builtin")
        extra = set(table) - {"builtin"}
        if extra:
            raise ConfigError(
                f"[system]: builtin {name!r} takes no other keys, got {sorted(extra)}"
            )
        return BUILTIN[name](), name
    if "mobile" not in table:
        raise ConfigError("[system]: give builtin = 'heptamer' | 'adatom', or mobile = 'Pt7' ...")
    mobile = _typed(table["mobile"], str, "system.mobile")
    name = table.get("name", "custom")
    try:
        if "template" in table and "box" not in table:
            template = Path(_typed(table["template"], str, "system.template"))
            path = template if template.is_absolute() else base_dir / template
            z = table.get("z_range")
            if not (isinstance(z, list) and len(z) == 2):
                raise ConfigError("system.z_range: expected [lo, hi] in Å above the slab")
            return make_surface_system(str(path), mobile, tuple(float(v) for v in z), name), name
        if "box" not in table:
            raise ConfigError("[system]: a slab needs template and z_range, a cluster needs box")
        box = table["box"]
        vacuum = float(table.get("vacuum", 10.0))
        template = table.get("template")
        if template is not None:
            template = str(base_dir / template)
        return make_cluster_system(mobile, box, template=template, vacuum=vacuum, name=name), name
    except (FileNotFoundError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"[system]: {err}") from None


def check_fits(system: System, min_distance: float) -> None:
    """The mobile atoms must fit in the box at min_distance (a dense packing bound)."""
    m = system.n_mobile
    if system.mode == "cluster":
        lengths = np.asarray(system.box_hi) - np.asarray(system.box_lo)
        volume = float(np.prod(lengths + min_distance))
    else:
        area = abs(np.linalg.det(system.cell[:2, :2]))
        volume = area * float(system.box_hi[2] - system.box_lo[2] + min_distance)
    # Spheres of diameter min_distance pack at most pi / sqrt(18) of the space.
    capacity = volume * (math.pi / math.sqrt(18)) / (math.pi / 6 * min_distance**3)
    if m > capacity:
        raise ConfigError(
            f"[system]: {m} mobile atoms cannot fit in the box ({volume:.1f} Å^3) at "
            f"sampler.min_distance = {min_distance} Å (at most ~{int(capacity)})"
        )


def is_mace(model: str) -> bool:
    """'mace:PATH': a converted MACE model, run inside jit."""
    return model.startswith("mace:")


def _mace_model(path: str, system: System):
    from godiff_jax.checkpoint import CheckpointError
    from godiff_jax.potentials.mace import MaceModelError, load_mace

    try:
        model = load_mace(path)
        model.species_index(system.numbers)
    except (MaceModelError, CheckpointError) as err:
        raise ConfigError(f"energy.model = 'mace:{path}': {err}") from None
    return model


def _energy(table: dict, system: System, base_dir: Path = Path(".")) -> dict:
    _check_keys(table, _ENERGY_KEYS, "[energy]")
    model = table.get("model", "emt")
    if not isinstance(model, str):
        raise ConfigError(f"energy.model: expected a string, got {model!r}")
    host = model.startswith("ase:") or model in ML_POTENTIALS
    mace_path = None
    if model == "emt":
        from godiff_jax.potentials.emt import _check_supported

        try:
            _check_supported(system.numbers)
        except ValueError as err:
            raise ConfigError(f"energy.model = 'emt': {err}") from None
    elif model == "lj":
        for key in ("epsilon", "sigma", "cutoff"):
            if key in table and not _typed(table[key], float, f"energy.{key}") > 0:
                raise ConfigError(f"energy.{key}: must be positive, got {table[key]}")
    elif is_mace(model):
        mace_path = Path(model[5:]).expanduser()
        mace_path = str(mace_path if mace_path.is_absolute() else Path(base_dir) / mace_path)
        _mace_model(mace_path, system)
    elif host:
        calculator_class(model)
        if not isinstance(table.get("kwargs", {}), dict):
            raise ConfigError("energy.kwargs: expected a table of keyword arguments")
    else:
        raise _unknown(model, set(ENERGY_MODELS), "energy.model")
    if "n_workers" in table and _typed(table["n_workers"], int, "energy.n_workers") < 1:
        raise ConfigError(f"energy.n_workers: must be at least 1, got {table['n_workers']}")
    ml = model in ML_POTENTIALS or is_mace(model)
    floor = table.get("floor_per_atom", DEFAULT_FLOOR_PER_ATOM if ml else None)
    if floor is False:
        floor = None
    elif floor is not None:
        floor = _typed(floor, float, "energy.floor_per_atom")
    checked = dict(table, model=model, floor_per_atom=floor)
    if mace_path is not None:
        checked["mace_path"] = mace_path
    if "dask" in table:
        if not host:
            raise ConfigError(
                f"[energy.dask]: only for host calculators (sevennet, chgnet, ase:...); "
                f"{model!r} runs inside the compiled program"
            )
        checked["dask"] = _dask(table["dask"])
    return checked


def _dask(table) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"[energy.dask] must be a table, got {table!r}")
    _check_keys(table, _DASK_KEYS, "[energy.dask]")
    out = dict(table)
    if "scheduler" in out:
        _typed(out["scheduler"], str, "energy.dask.scheduler")
    for key, least in (("n_workers", 1), ("retries", 0)):
        if key in out and _typed(out[key], int, f"energy.dask.{key}") < least:
            raise ConfigError(f"energy.dask.{key}: must be at least {least}, got {out[key]}")
    if "time_limit" in out and not _typed(out["time_limit"], float, "energy.dask.time_limit") > 0:
        raise ConfigError(f"energy.dask.time_limit: must be positive, got {out['time_limit']}")
    return out


def calculator_class(model: str) -> type:
    """The class named by 'ase:module.Class' or by a universal potential's name."""
    hint = f" (pip install 'godiff_jax[{model}]')" if model in ML_POTENTIALS else ""
    path = ML_POTENTIALS[model][0] if model in ML_POTENTIALS else model[4:]
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(
            f"energy.model = {model!r}: cannot import {path!r} ({err}){hint}"
        ) from None


def calculator_factory(energy: dict):
    """A picklable zero-argument callable building the [energy] table's ASE calculator."""
    defaults = ML_POTENTIALS[energy["model"]][1] if energy["model"] in ML_POTENTIALS else {}
    return functools.partial(
        calculator_class(energy["model"]), **{**defaults, **energy.get("kwargs", {})}
    )


def make_evaluator(spec: RunSpec):
    """The evaluator the [energy] table names (JAX models inside jit, ASE on the host,
    on a Dask cluster with [energy.dask])."""
    from godiff_jax.evaluate import AseEvaluator, JaxEvaluator

    e = spec.energy
    if e["model"] == "emt":
        from godiff_jax.potentials.emt import emt_energy_fn

        return JaxEvaluator(emt_energy_fn(spec.system, asap_cutoff=e.get("asap_cutoff", False)))
    if e["model"] == "lj":
        from godiff_jax.potentials.lj import lj_energy_fn

        kw = {k: float(e[k]) for k in ("epsilon", "sigma", "cutoff") if k in e}
        return JaxEvaluator(lj_energy_fn(spec.system, **kw))
    if is_mace(e["model"]):
        from godiff_jax.potentials.mace import mace_energy_fn

        return JaxEvaluator(mace_energy_fn(spec.system, _mace_model(e["mace_path"], spec.system)))
    make = calculator_factory(e)
    if "dask" in e:
        from godiff_jax.dask_evaluator import DaskEvaluator

        d = e["dask"]
        return DaskEvaluator(
            make,
            address=d.get("scheduler"),
            n_workers=d.get("n_workers", e.get("n_workers")),
            retries=d.get("retries", 1),
            time_limit=d.get("time_limit"),
        )
    return AseEvaluator(make(), n_workers=e.get("n_workers", 1))


def load_run(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    workdir: str | Path | None = None,
    seeds: int | None = None,
    base: SearchConfig | None = None,
) -> RunSpec:
    """Read and check a run's TOML file; `overrides` are dotted settings (from --set)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r} is not readable TOML: {err}") from None
    return spec_from_dict(data, path.parent, overrides, workdir, seeds, base)


def spec_from_dict(data, base_dir, overrides=None, workdir=None, seeds=None, base=None):
    """`load_run` on an already parsed table (paths relative to base_dir)."""
    for key in data:
        if key not in _TOP:
            raise _unknown(key, _TOP | set(field_names()), "config")
    system, system_name = _system(data.get("system", {}), Path(base_dir))
    if base is None:
        base = system_settings(system_name, data.get("preset"))
    config = search_settings(data, base)
    if overrides:
        config = search_settings(_nest(overrides), config)
    check_fits(system, config.sampler.min_distance)
    energy = _energy(data.get("energy", {}), system, Path(base_dir))
    if energy["floor_per_atom"] is not None and config.buffer.energy_floor is None:
        config = config.replace(energy_floor=energy["floor_per_atom"] * system.n_atoms)
    run = data.get("run", {})
    _check_keys(run, _RUN_KEYS, "[run]")
    n_seeds = seeds if seeds is not None else _typed(run.get("seeds", 1), int, "run.seeds")
    first = _typed(run.get("first_seed", 0), int, "run.first_seed")
    if n_seeds < 1:
        raise ConfigError(f"run.seeds: must be at least 1, got {n_seeds}")
    out = Path(workdir or run.get("workdir", f"runs/{system_name}"))
    return RunSpec(
        system, system_name, config, energy, out, list(range(first, first + n_seeds)), data
    )


def _nest(names: dict[str, Any]) -> dict:
    out: dict[str, Any] = {}
    for name, value in names.items():
        from godiff_jax.config import resolve

        try:
            section, leaf = resolve(name)
        except KeyError as err:
            raise ConfigError(err.args[0]) from None
        if section is None:
            out[leaf] = value
        else:
            out.setdefault(section, {})[leaf] = value
    return out


def system_settings(system_name: str, preset: Any = None) -> SearchConfig:
    """The default settings of a built-in system (the heptamer's for any other), or with
    `preset` (a name or a list of names) the paper's and the named overlays."""
    names = [preset] if isinstance(preset, str) else preset
    if names is not None and not (
        isinstance(names, list) and all(isinstance(n, str) for n in names)
    ):
        raise ConfigError(f"preset: expected a name or a list of names, got {preset!r}")
    name = system_name if system_name in PAPER_SETTINGS else "heptamer"
    try:
        return with_presets(DEFAULT_SETTINGS[name], PAPER_SETTINGS[name], names)
    except ValueError as err:
        raise ConfigError(f"preset: {err}") from None


def success_test(spec: RunSpec, evaluator=None):
    """The built-in system's success test, or None for the user's systems.

    With EMT: against EMT's minimum. With LJ, MACE or a universal potential: against the model's
    own minimum (`model_success`; found once here by relaxing the reference structures).
    With any other ASE calculator (perhaps DFT, whose relaxations would cost evaluations
    the run does not count): the structural tests alone, the heptamer's bond graph and the
    adatom's minimum site.
    """
    from godiff_jax import model_success
    from godiff_jax.analysis import success_fn

    model = spec.energy["model"]
    if spec.system_name not in BUILTIN or model == "emt":
        return success_fn(spec.system_name, spec.system)
    if model == "lj" or is_mace(model):
        relax = model_success.jax_relaxer((evaluator or make_evaluator(spec)).energy_fn)
        return model_success.model_success_fn(spec.system_name, spec.system, relax)
    if model not in ML_POTENTIALS:
        return model_success.structure_success_fn(spec.system_name, spec.system)
    from godiff_jax.ase_interop import ase_relaxer

    relax = ase_relaxer(spec.system, calculator_factory(spec.energy)())
    # A relaxation costs many single points of the model: a few candidates per batch.
    return model_success.model_success_fn(spec.system_name, spec.system, relax, max_relax=2)


def experiment_energy(model: str, builtin: str, system: System, config: SearchConfig):
    """`--energy MODEL` of an experiment script (emt, lj, mace:PATH, sevennet, ...):
    (config with the model's default energy floor, evaluator, success test)."""
    energy = _energy({"model": model}, system, Path.cwd())
    if energy["floor_per_atom"] is not None and config.buffer.energy_floor is None:
        config = config.replace(energy_floor=energy["floor_per_atom"] * system.n_atoms)
    spec = RunSpec(system, builtin, config, energy, Path("."), [0], {"energy": {"model": model}})
    evaluator = make_evaluator(spec)
    return config, evaluator, success_test(spec, evaluator)
