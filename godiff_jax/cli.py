"""Command-line driver shared by the experiment scripts (`experiments/*.py`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path

import numpy as np

from godiff_jax import io
from godiff_jax.config import PAPER, PRESET_NAMES, SearchConfig, field_type, with_presets
from godiff_jax.evaluate import Evaluator
from godiff_jax.runner import run
from godiff_jax.runtime import keep_heap_memory, split_cpu, use_compilation_cache
from godiff_jax.search import SuccessFn
from godiff_jax.system import System


def experiment_parser(description: str, default_workdir: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds, run as one program")
    p.add_argument(
        "--seed-batch",
        type=int,
        default=None,
        help="seeds vmapped together (default: all; fewer loops over groups, for memory)",
    )
    p.add_argument("--workdir", default=default_workdir, help="run directory (resumes if present)")
    p.add_argument("--quick", action="store_true", help="small preset: minutes on a 2-core CPU")
    p.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        action="append",
        default=None,
        help="paper: the paper's settings instead of the default; reference: every choice "
        "of the authors' code (repeatable: --preset paper --preset reference)",
    )
    p.add_argument("--iterations", type=int, default=None, help="stop after this many (resumable)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--energy",
        default=None,
        metavar="MODEL",
        help="energy model instead of the JAX EMT: lj, mace:PATH (a `godiff convert-mace` "
        "file), sevennet, chgnet, ase:module.Class",
    )
    _transfer_arguments(p)
    _cpu_argument(p)
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="a fresh model, where the experiment starts from a pretrained one by default",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one setting, e.g. --set training.train_steps=4000 or train_steps=4000 (repeatable)",
    )
    return p


def split_and_report(n_seeds: int, devices: str | None, seed_batch: int | None = None) -> int:
    """`runtime.split_cpu` for an entry point: a bad --cpu-devices exits with its reason, and
    a CPU run on several devices says so."""
    import jax

    try:
        n_cpu = split_cpu(n_seeds, devices, seed_batch)
    except ValueError as err:
        raise SystemExit(f"--cpu-devices: {err}") from None
    if n_cpu > 1 and jax.default_backend() == "cpu":
        print(f"CPU split into {n_cpu} devices, {n_seeds} seed(s) over them")
    return n_cpu


def _cpu_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cpu-devices",
        default=None,
        metavar="N",
        help="on a CPU, run the seeds as N parallel device streams, or 'auto' (the largest "
        "divisor of the seed count not above the cores; default: $GODIFF_JAX_CPU_DEVICES, "
        "else auto)",
    )


def _transfer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--init-params",
        default=None,
        metavar="SOURCE",
        help="start from trained score-model parameters: a run directory, a parameter "
        "file, or a shipped model (adatom)",
    )
    p.add_argument(
        "--init-seed",
        type=int,
        default=None,
        help="with a run directory as --init-params: its seed (default: the best one)",
    )
    p.add_argument(
        "--carry-force-head",
        action="store_true",
        help="with --init-params from a guided run: keep its force head too",
    )


def pretrained_start(system: System, config: SearchConfig, args) -> dict:
    """`run` keyword arguments for --init-params (empty without it); prints the source."""
    if args.init_params is None:
        return {}
    from godiff_jax.search import GODiff
    from godiff_jax.transfer import load_pretrained, params_template

    score, head = params_template(GODiff(system, config))
    if args.carry_force_head and head is None:
        raise SystemExit("--carry-force-head needs guidance on (--set ffg=true)")
    got = load_pretrained(
        args.init_params,
        score,
        seed=args.init_seed,
        force_head_template=head if args.carry_force_head else None,
    )
    print(f"score model from {args.init_params}: {json.dumps(got.meta.get('source'))}")
    return {"init_params": got.params, "init_force_head": got.force_head}


def _parse_value(text: str, declared: object) -> object:
    """A --set value as its field's declared type (bool: true/false in any case)."""
    options = typing.get_args(declared) or (declared,)
    if text.lower() in ("none", "null"):
        if type(None) not in options:
            raise ValueError("this setting cannot be none")
        return None
    kind = next(t for t in options if t is not type(None))
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError("expected true or false")
        return text.lower() == "true"
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    return text


def parse_assignments(assignments: list[str]) -> dict[str, object]:
    """{name: value} from `NAME=VALUE` items; NAME dotted (`model.features`) or a flat alias
    (`features`), VALUE read as the field's type. Raises ValueError naming the item."""
    changes = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE, e.g. training.train_steps=500")
        try:
            changes[name] = _parse_value(text, field_type(name))
        except KeyError as err:
            raise ValueError(f"--set {item!r}: {err.args[0]}") from None
        except ValueError as err:
            raise ValueError(f"--set {item!r}: {err}") from None
    return changes


def apply_overrides(config: SearchConfig, assignments: list[str]) -> SearchConfig:
    """SearchConfig with `NAME=VALUE` overrides (see `parse_assignments`)."""
    try:
        return config.replace(**parse_assignments(assignments))
    except (TypeError, ValueError) as err:
        raise SystemExit(str(err) if str(err).startswith("--set") else f"--set: {err}") from None


def run_experiment(
    system: System,
    config: SearchConfig,
    quick: SearchConfig,
    *,
    evaluator: Evaluator,
    make_success: Callable[[System], SuccessFn] | None,
    description: str,
    default_workdir: str,
    argv: list[str] | None = None,
    init: str | None = None,
    quick_init: str | None = None,
    builtin: str | None = None,
    paper: SearchConfig | None = None,
) -> None:
    """The experiments' main: parse the arguments and run. `config` is the default and
    `paper` the paper's settings, `--preset paper` (None: `config` is the paper's); `init`
    and `quick_init` are the models that the run and the --quick run start from (a shipped
    name, a run directory or a parameter file; None: a fresh model); --init-params or
    --from-scratch override."""
    args = experiment_parser(description, default_workdir).parse_args(argv)
    default_init = quick_init if args.quick else init
    if args.init_params is None and not args.from_scratch:
        args.init_params = default_init
    keep_heap_memory()  # XLA re-allocates its buffers every call; keep freed heap mapped
    use_compilation_cache()
    if args.quick and args.preset and PAPER in args.preset:
        raise SystemExit("--quick and --preset paper are two different settings; choose one")
    base = quick if args.quick else config
    cfg = apply_overrides(with_presets(base, paper or base, args.preset), args.set)
    seeds = list(range(args.seed, args.seed + args.seeds))
    split_and_report(len(seeds), args.cpu_devices, args.seed_batch)
    workdir = Path(args.workdir)
    print(f"{system.name}: {len(seeds)} seed(s) {seeds}, workdir {workdir}")
    print(json.dumps(cfg.to_dict()))
    t0 = time.perf_counter()
    if args.energy is not None and builtin is not None:
        from godiff_jax.run_config import ConfigError, experiment_energy

        try:
            cfg, evaluator, success = experiment_energy(args.energy, builtin, system, cfg)
        except ConfigError as err:
            raise SystemExit(f"--energy: {err}") from None
        print(f"energy model: {args.energy}")
    else:
        success = make_success(system) if make_success is not None else None
    start = pretrained_start(system, cfg, args)
    state = run(
        system,
        cfg,
        workdir,
        evaluator=evaluator,
        seeds=seeds,
        success_fn=success,
        max_iterations=args.iterations,
        progress=not args.no_progress,
        seed_batch=args.seed_batch,
        **start,
    )
    wall = time.perf_counter() - t0
    summarise(workdir, seeds, state, wall)


def summarise(workdir: Path, seeds: list[int], state, wall: float) -> None:
    rows = io.read_metrics(workdir)
    print(f"\nwall time this invocation: {wall:.1f} s")
    print("seed  iterations  evaluations  best_energy_eV  first_success_eval  first_success_s")
    for seed in seeds:
        last = [r for r in rows if r["seed"] == seed]
        if not last:
            continue
        r = last[-1]
        fs = r["first_success_evaluation"]
        fss = r["first_success_seconds"]
        print(
            f"{seed:4d}  {r['iteration'] + 1:10d}  {r['evaluations']:11d}  "
            f"{r['best_energy']:14.4f}  {fs if fs is not None else '-':>18}  "
            f"{f'{fss:.0f}' if fss is not None else '-':>15}"
            + ("" if r.get("params_finite", True) else "  PARAMETERS NOT FINITE")
        )
    n_succ = int(np.sum(np.asarray(state.first_success) >= 0))
    print(f"successes: {n_succ}/{len(seeds)}")


def _command_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="godiff",
        description="GO-Diff: data-free diffusion for global structure optimisation.",
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="start (or continue) a search from a TOML config file")
    r.add_argument("config", help="the run's TOML file (see the README)")
    r.add_argument("--workdir", default=None, help="run directory (default: [run] workdir)")
    r.add_argument("--seeds", type=int, default=None, help="number of seeds (default: [run])")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a setting by dotted name, e.g. training.train_steps=500",
    )
    _transfer_arguments(r)
    for q in (r, sub.add_parser("resume", help="continue the search in a run directory")):
        q.add_argument("--iterations", type=int, default=None, help="stop after this many")
        q.add_argument("--no-progress", action="store_true")
        _cpu_argument(q)
    sub.choices["resume"].add_argument("workdir", help="a run directory made by godiff run")
    rep = sub.add_parser("report", help="figures, summary and best structures of a run directory")
    rep.add_argument("workdir")
    rep.add_argument("--out", default=None, help="folder for the report (default WORKDIR/report)")
    sub.add_parser("systems", help="the built-in systems and energy models")
    cm = sub.add_parser(
        "convert-mace",
        help="a mace-torch model file (e.g. MACE-MP-0) -> our torch-free MACE file "
        "(needs the mace extra; reads a pickle: only convert files you trust)",
    )
    cm.add_argument("model", help="the mace-torch .model file")
    cm.add_argument("out", help="the file to write (use it as [energy] model = 'mace:OUT')")
    ex = sub.add_parser(
        "export-params", help="a run's trained score model as a parameter file, for transfer"
    )
    ex.add_argument("workdir", help="a run directory")
    ex.add_argument("out", help="the parameter file to write")
    ex.add_argument("--seed", type=int, default=None, help="which seed (default: the best one)")
    ex.add_argument(
        "--command-used",
        default=None,
        help="the command that made the run, recorded in the file (for regenerating it)",
    )
    return p


RUN_RECORD = "run.json"  # what `godiff resume` needs: the TOML as read, overrides, seeds


def _run_spec(args):
    from godiff_jax.run_config import ConfigError, load_run, spec_from_dict

    if args.command == "run":
        try:
            overrides = parse_assignments(args.set)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        spec = load_run(args.config, overrides, args.workdir, args.seeds)
        record = {
            "config": spec.source,
            "base_dir": str(Path(args.config).resolve().parent),
            "overrides": overrides,
            "seeds": spec.seeds,
            "workdir": str(spec.workdir),
            "settings_base": "default",  # the TOML's settings are over DEFAULT_SETTINGS
        }
        return spec, record
    path = Path(args.workdir) / RUN_RECORD
    if not path.exists():
        raise ConfigError(f"{args.workdir} holds no run made by `godiff run` (no {RUN_RECORD})")
    record = json.loads(path.read_text())
    config = record["config"]
    if record.get("settings_base") != "default" and "preset" not in config:
        config = {**config, "preset": PAPER}  # made before the default changed
    spec = spec_from_dict(
        config,
        record["base_dir"],
        record["overrides"],
        args.workdir,
        len(record["seeds"]),
    )
    return spec, record


def _command_run(args) -> None:
    from godiff_jax.run_config import make_evaluator, success_test

    spec, record = _run_spec(args)
    spec.workdir.mkdir(parents=True, exist_ok=True)
    io.write_config(spec.workdir, spec.config)  # refuses a directory of another run
    path = spec.workdir / RUN_RECORD
    if args.command == "run" and path.exists():
        old = json.loads(path.read_text())
        if (
            old["seeds"] != record["seeds"]
            or old["config"].get("system") != record["config"].get("system")
            or old["config"].get("energy") != record["config"].get("energy")
        ):
            raise ValueError(
                f"{spec.workdir} holds a run of another system, energy model or seeds; "
                "use a new --workdir, or `godiff resume` to continue it"
            )
    io.atomic_write(path, json.dumps(record, indent=2).encode())
    keep_heap_memory()
    use_compilation_cache()
    split_and_report(len(spec.seeds), args.cpu_devices)
    print(f"{spec.system.name}: {len(spec.seeds)} seed(s) {spec.seeds}, workdir {spec.workdir}")
    evaluator = make_evaluator(spec)
    start = pretrained_start(spec.system, spec.config, args) if args.command == "run" else {}
    t0 = time.perf_counter()
    try:
        state = run(
            spec.system,
            spec.config,
            spec.workdir,
            evaluator=evaluator,
            seeds=spec.seeds,
            success_fn=success_test(spec, evaluator),
            max_iterations=args.iterations,
            progress=not args.no_progress,
            **start,
        )
    finally:
        close = getattr(evaluator, "close", None)
        if close is not None:
            close()
    summarise(spec.workdir, spec.seeds, state, time.perf_counter() - t0)


def _command_report(args) -> None:
    from godiff_jax.report import write_report

    text, files = write_report(Path(args.workdir), args.out)
    print(text, end="")
    print(f"wrote {', '.join(f.name for f in files)} to {files[0].parent}")


def _command_export_params(args) -> None:
    from godiff_jax.transfer import export_params

    meta = {} if args.command_used is None else {"command": args.command_used}
    info = export_params(args.workdir, args.out, args.seed, **meta)
    print(
        f"wrote {args.out}: seed {info['source']['seed']} of {args.workdir}, "
        f"iteration {info['source']['iteration']}, params_version {info['params_version']}"
    )


def _command_convert_mace(args) -> None:
    try:
        from godiff_jax.potentials.mace.convert import convert
    except ImportError as err:
        raise ValueError(f"{err}; install the mace extra: pip install 'godiff_jax[mace]'") from None
    try:
        model = convert(args.model, args.out)
    except ImportError as err:
        raise ValueError(f"{err}; install the mace extra: pip install 'godiff_jax[mace]'") from None
    from ase.data import chemical_symbols

    cfg = model.config
    print(
        f"wrote {args.out}: {cfg['source']}, {len(cfg['atomic_numbers'])} elements "
        f"({' '.join(chemical_symbols[z] for z in cfg['atomic_numbers'][:10])}"
        f"{' ...' if len(cfg['atomic_numbers']) > 10 else ''}), r_max {cfg['r_max']} Å, "
        f"{cfg['channels']} channels, hidden l {cfg['hidden_ls'][0]}"
    )


def _command_systems(args) -> None:
    from godiff_jax.run_config import BUILTIN, ENERGY_MODELS

    print("built-in systems ([system] builtin = NAME):")
    for name, make in BUILTIN.items():
        system = make()
        print(
            f"  {name:10s} {system.formula} on {system.n_template} template atoms "
            f"({system.mode}); {(make.__doc__ or '').strip().splitlines()[0]}"
        )
    print("energy models ([energy] model = NAME):")
    for name, text in ENERGY_MODELS.items():
        print(f"  {name:18s} {text}")


def main(argv: list[str] | None = None) -> None:
    """The `godiff` command: run, resume, report, systems, export-params, convert-mace."""
    from godiff_jax.checkpoint import CheckpointError
    from godiff_jax.run_config import ConfigError

    args = _command_parser().parse_args(argv)
    commands = {
        "run": _command_run,
        "resume": _command_run,
        "report": _command_report,
        "systems": _command_systems,
        "export-params": _command_export_params,
        "convert-mace": _command_convert_mace,
    }
    try:
        commands[args.command](args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        where = getattr(args, "workdir", None) or "the run directory"
        print(f"godiff: interrupted; continue with `godiff resume {where}`", file=sys.stderr)
        raise SystemExit(130) from None
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as err:
        if args.debug:
            raise
        print(f"godiff {args.command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
