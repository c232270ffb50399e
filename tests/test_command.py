"""The `godiff` command as a user runs it: subprocesses on tiny configs."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import ase.db
import numpy as np
import pytest

from godiff_jax import checkpoint, io
from godiff_jax.run_config import ConfigError, load_run

TESTS = Path(__file__).resolve().parent

TINY_TOML = """
n_iterations = 2
[system]
builtin = "adatom"
[energy]
model = "{model}"
{energy}
[run]
seeds = 1
[sampler]
n_samples = 6
n_reverse_steps = 4
[buffer]
buffer_size = 6
kT_start = 1.0
kT_end = 0.1
[training]
train_steps = 4
batch_size = 3
[model]
features = 8
n_blocks = 1
n_rbf = 6
cutoff = 5.0
"""


def godiff(*args, cwd, check=True):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    # The installed console script, as a user types it (next to this interpreter).
    script = Path(sys.executable).with_name("godiff")
    if script.exists():
        cmd = [str(script)]
    else:  # not installed as a distribution: the same entry point
        cmd = [
            sys.executable,
            "-c",
            "import sys; from godiff_jax.cli import main; main(sys.argv[1:])",
        ]
    out = subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(
            f"godiff {args} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
        )
    return out


def _write(tmp_path, name, model="emt", energy=""):
    path = tmp_path / name
    path.write_text(TINY_TOML.format(model=model, energy=energy))
    return path


BAD = [
    ("n_iterations = 2\nbatchsize = 3\n", "unknown key 'batchsize'"),
    ("[training]\nbatchsize = 3\n", "did you mean 'batch_size'"),
    ("[training]\ntrain_steps = 'many'\n", "training.train_steps: expected int"),
    ("[sampler]\nn_samples = 0\n", "sampler.n_samples: must be positive"),
    ("[sampler]\nn_samples = -4\n", "must be positive"),
    ("[system]\nbuiltin = 'heptamr'\n", "did you mean 'heptamer'"),
    ("[system]\nmobile = 'Pt7'\ntemplate = 'missing.extxyz'\nz_range = [1, 6]\n", "does not exist"),
    ("[system]\nmobile = 'Pt7'\ntemplate = 'bad.extxyz'\nz_range = [1, 6]\n", "could not be read"),
    ("[system]\nmobile = 'Pt200'\nbox = 3.0\n", "cannot fit in the box"),
    ("[system]\nmobile = 'Fe3'\nbox = 8.0\n", "EMT has no parameters for Fe"),
    ("[energy]\nmodel = 'dft'\n", "energy.model: unknown key 'dft'"),
    ("[energy]\nmodel = 'ase:no_such_module.Calc'\n", "cannot import"),
    ("[run]\nseeds = 0\n", "run.seeds: must be at least 1"),
    ("[energy]\nmodel = 'emt'\n[energy.dask]\nretries = 1\n", "only for host calculators"),
    (
        "[energy]\nmodel = 'ase:ase.calculators.emt.EMT'\n[energy.dask]\nretries = -1\n",
        "at least 0",
    ),
    (
        "[energy]\nmodel = 'ase:ase.calculators.emt.EMT'\n[energy.dask]\ntimelimit = 9\n",
        "'time_limit'",
    ),
    ("[energy]\nmodel = 'ase:ase.calculators.emt.EMT'\nfloor_per_atom = 'low'\n", "expected float"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_named_before_any_work(tmp_path, text, message):
    (tmp_path / "bad.extxyz").write_text("not a structure file\n")
    path = tmp_path / "c.toml"
    base = "" if "[system]" in text else "\n[system]\nbuiltin = 'adatom'\n"
    path.write_text(text + base)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_run(path)


def test_universal_potentials_get_a_floor_that_scales_with_the_system(tmp_path, monkeypatch):
    from godiff_jax import run_config

    # A stand-in universal potential (the real ones live in their own environments).
    monkeypatch.setitem(run_config.ML_POTENTIALS, "fakeml", ("ase.calculators.emt.EMT", {}))
    monkeypatch.setitem(run_config.ML_POTENTIALS, "gone", ("no_such_pkg.Calc", {}))
    spec = load_run(_write(tmp_path, "a.toml", model="fakeml"))
    n_atoms = spec.system.n_atoms
    assert spec.config.energy_floor == run_config.DEFAULT_FLOOR_PER_ATOM * n_atoms
    spec = load_run(_write(tmp_path, "b.toml", model="fakeml", energy="floor_per_atom = -7.5"))
    assert spec.config.energy_floor == -7.5 * n_atoms
    spec = load_run(_write(tmp_path, "c.toml", model="fakeml", energy="floor_per_atom = false"))
    assert spec.config.energy_floor is None
    # any other ASE calculator has none unless asked; [buffer] energy_floor wins over it
    model = "ase:ase.calculators.emt.EMT"
    assert load_run(_write(tmp_path, "d.toml", model=model)).config.energy_floor is None
    path = _write(tmp_path, "e.toml", model="fakeml")
    path.write_text(path.read_text().replace("[buffer]", "[buffer]\nenergy_floor = -1.0"))
    assert load_run(path).config.energy_floor == -1.0
    with pytest.raises(ConfigError, match=r"pip install 'godiff_jax\[gone\]'"):
        load_run(_write(tmp_path, "f.toml", model="gone"))


def test_the_dask_table_makes_a_dask_evaluator(tmp_path):
    pytest.importorskip("distributed")
    from godiff_jax.dask_evaluator import DaskEvaluator
    from godiff_jax.run_config import make_evaluator

    energy = 'kwargs = {asap_cutoff = true}\n[energy.dask]\nscheduler = "tcp://nowhere:1"\n'
    energy += "retries = 3\ntime_limit = 60\n"
    spec = load_run(_write(tmp_path, "a.toml", model="ase:ase.calculators.emt.EMT", energy=energy))
    ev = make_evaluator(spec)  # nothing connects until the first evaluation
    assert isinstance(ev, DaskEvaluator) and (ev.retries, ev.time_limit) == (3, 60.0)
    assert ev.make_calculator().parameters.get("asap_cutoff") is True


def test_bad_input_exits_non_zero_without_traceback(tmp_path, capsys):
    from godiff_jax.cli import main

    path = tmp_path / "c.toml"
    path.write_text("[system]\nbuiltin = 'adatom'\n[training]\nbatchsize = 3\n")
    out = godiff("run", str(path), cwd=tmp_path, check=False)  # as a user sees it
    assert out.returncode == 2 and "did you mean 'batch_size'" in out.stderr
    assert "Traceback" not in out.stderr
    with pytest.raises(ConfigError):  # --debug: the exception itself
        main(["--debug", "run", str(path)])
    with pytest.raises(SystemExit) as stop:
        main(["resume", str(tmp_path / "nowhere")])
    assert stop.value.code == 2 and "holds no run" in capsys.readouterr().err
    # a workdir that holds another run's settings is refused before any work
    good = _write(tmp_path, "tiny.toml")
    (tmp_path / "w").mkdir()
    io.write_config(tmp_path / "w", load_run(good).config)
    before = (tmp_path / "w" / "config.json").read_text()
    with pytest.raises(SystemExit) as stop:
        main(["run", str(good), "--workdir", str(tmp_path / "w"), "--set", "train_steps=5"])
    assert stop.value.code == 2 and "different config" in capsys.readouterr().err
    assert (tmp_path / "w" / "config.json").read_text() == before
    for sub in ("run", "resume", "report", "systems"):
        with pytest.raises(SystemExit) as stop:
            main([sub, "--help"])
        assert stop.value.code == 0 and "usage: godiff" in capsys.readouterr().out


def _rows(workdir):
    with ase.db.connect(workdir / "structures.db") as db:
        return {(r.iteration, r.seed, r.index): r for r in db.select()}


def test_run_killed_mid_evaluation_resumes_without_recomputing(tmp_path, capsys):
    """`godiff run` from a config file, stopped after one iteration and resumed: the
    uninterrupted reference. The same run with an ASE calculator that kills its own process
    at its 9th call (in iteration 1): the resumed run keeps the 8 evaluated before the kill,
    evaluates only the rest, and ends with the database and metrics of the reference."""
    from godiff_jax.cli import main

    energy = 'n_workers = 1\n[energy.kwargs]\nlog = "{log}"\nkill_at = {k}'
    full = _write(
        tmp_path,
        "full.toml",
        "ase:calculators.CountedEMT",
        energy.format(log=tmp_path / "full.log", k=0),
    )
    cut = _write(
        tmp_path,
        "cut.toml",
        "ase:calculators.CountedEMT",
        energy.format(log=tmp_path / "cut.log", k=9),
    )
    out = godiff(
        "run", str(full), "--workdir", "full", "--iterations", "1", "--no-progress", cwd=tmp_path
    )
    assert "successes:" in out.stdout and len(io.read_metrics(tmp_path / "full")) == 1
    godiff("resume", "full", "--no-progress", cwd=tmp_path)
    out = godiff("run", str(cut), "--workdir", "cut", "--no-progress", cwd=tmp_path, check=False)
    assert out.returncode == -9  # SIGKILL
    before = _rows(tmp_path / "cut")
    # the 8 finished evaluations are in the database; the 9th died with the process
    assert len(before) == 8 and any(k[0] == 1 for k in before)
    godiff("resume", "cut", "--no-progress", cwd=tmp_path)
    n_full = len((tmp_path / "full.log").read_text().splitlines())
    n_cut = len((tmp_path / "cut.log").read_text().splitlines())
    assert n_cut == n_full + 1  # only the one in flight at the kill was evaluated again
    a, b = _rows(tmp_path / "full"), _rows(tmp_path / "cut")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].get("valid") == b[key].get("valid")
        if "energy" in a[key]:
            assert a[key].energy == b[key].energy
            np.testing.assert_array_equal(a[key].positions, b[key].positions)
    fa, fb = io.read_metrics(tmp_path / "full"), io.read_metrics(tmp_path / "cut")
    assert [r["iteration"] for r in fa] == [r["iteration"] for r in fb] == [0, 1]
    for ra, rb in zip(fa, fb, strict=True):
        assert ra["best_energy"] == rb["best_energy"] and ra["loss_mean"] == rb["loss_mean"]
    # ... and the same final state: every archive array of the two checkpoints
    arrays = [
        checkpoint.decode((tmp_path / n / checkpoint.CHECKPOINT).read_bytes(), "run-state")[1]
        for n in ("full", "cut")
    ]
    for key in (k for k in arrays[0] if k.startswith(".archive") or k.startswith(".train.params")):
        np.testing.assert_array_equal(arrays[0][key], arrays[1][key], err_msg=key)
    main(["report", str(tmp_path / "cut")])
    assert "successes:" in capsys.readouterr().out
    systems = godiff("systems", cwd=tmp_path).stdout
    assert "heptamer" in systems and "adatom" in systems and "ase:module.Class" in systems


@pytest.mark.parametrize("name", ["heptamer", "adatom", "cluster_lj", "my_slab"])
def test_example_configs_are_valid(name):
    spec = load_run(TESTS.parent / "experiments" / "configs" / f"{name}.toml")
    assert spec.system.n_mobile >= 1 and spec.seeds == [0]
    if name in ("heptamer", "adatom"):  # the default settings, as the experiment scripts
        from godiff_jax.config import DEFAULT_SETTINGS

        assert spec.config == DEFAULT_SETTINGS[name]


def test_a_config_file_preset_selects_the_paper_settings(tmp_path):
    from godiff_jax.config import PAPER_SETTINGS, PRESETS
    from godiff_jax.run_config import spec_from_dict

    adatom = {"system": {"builtin": "adatom"}}
    spec = spec_from_dict({**adatom, "preset": "paper"}, tmp_path)
    assert spec.config == PAPER_SETTINGS["adatom"]
    spec = spec_from_dict({**adatom, "preset": ["paper", "reference"], "n_iterations": 4}, tmp_path)
    assert spec.config == PAPER_SETTINGS["adatom"].replace(n_iterations=4, **PRESETS["reference"])
    for bad, match in ((3, "expected a name or a list of names, got 3"),
                       ("papers", "unknown preset 'papers'; known: paper, reference")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"preset: {match}"):
            spec_from_dict({**adatom, "preset": bad}, tmp_path)


def test_a_run_made_before_the_default_changed_resumes_at_the_paper_settings(tmp_path):
    from godiff_jax.cli import RUN_RECORD, _run_spec
    from godiff_jax.config import DEFAULT_SETTINGS, PAPER_SETTINGS

    record = {"config": {"system": {"builtin": "adatom"}}, "base_dir": str(tmp_path),
              "overrides": {}, "seeds": [0], "workdir": str(tmp_path)}  # fmt: skip
    (tmp_path / RUN_RECORD).write_text(json.dumps(record))
    args = argparse.Namespace(command="resume", workdir=str(tmp_path))
    assert _run_spec(args)[0].config == PAPER_SETTINGS["adatom"]
    record["settings_base"] = "default"  # what `godiff run` records now
    (tmp_path / RUN_RECORD).write_text(json.dumps(record))
    assert _run_spec(args)[0].config == DEFAULT_SETTINGS["adatom"]


def test_the_sevennet_example_is_valid(monkeypatch):
    import importlib.util

    from godiff_jax import run_config

    if importlib.util.find_spec("sevenn") is None:  # its own environment: a stand-in here
        monkeypatch.setitem(run_config.ML_POTENTIALS, "sevennet", ("ase.calculators.emt.EMT", {}))
    spec = load_run(TESTS.parent / "experiments" / "configs" / "heptamer_sevennet.toml")
    assert spec.config.energy_floor == -15.0 * 79 and spec.energy["dask"]["n_workers"] == 2
