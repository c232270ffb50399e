"""Transfer: a trained score model starts a run on another system."""

import json
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from conftest import TINY, run_emt

from godiff_jax import checkpoint, cli, pt111_heptamer, stepped_pt_adatom, transfer
from godiff_jax.search import GODiff
from godiff_jax.system import make_cluster_system


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory):
    """A finished two-iteration adatom run with guidance on, two seeds."""
    workdir = tmp_path_factory.mktemp("adatom")
    config = TINY.replace(ffg=True, ffg_per_dt=False)
    state = run_emt(stepped_pt_adatom(), config, workdir, seeds=[3, 5], progress=False)
    return workdir, config, state


def _seed_of(state, i):
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[i], state)


def test_parameters_transfer_bitwise_to_a_system_of_another_size(guided_run, tmp_path):
    workdir, config, state = guided_run
    out = tmp_path / "adatom.msgpack"
    info = transfer.export_params(workdir, out, seed=5, command="pytest")
    assert info["params_version"] == transfer.PARAMS_VERSION and info["source"]["seed"] == 5
    target = make_cluster_system("Pt4Au", box=6.0)  # five atoms of two kinds, no template
    plain = TINY  # guidance off on the target: the force head is not needed
    score, _ = transfer.params_template(GODiff(target, plain))
    got = transfer.load_pretrained(out, score)
    assert got.force_head is None and got.meta["command"] == "pytest"
    new = run_emt(
        target, plain, tmp_path / "target", seeds=0, max_iterations=0, progress=False,
        init_params=got.params,
    )  # fmt: skip
    source = _seed_of(state, 1).train.params
    chex.assert_trees_all_equal(_seed_of(new, 0).train.params, source)  # every leaf, bitwise
    # the optimizer starts fresh
    assert int(np.asarray(new.train.step)[0]) == 0
    fresh = GODiff(target, plain).optimizer.init(source)
    chex.assert_trees_all_equal(_seed_of(new, 0).train.opt_state, fresh)


def test_force_head_is_fresh_unless_carried_over(guided_run, tmp_path):
    workdir, config, state = guided_run
    heptamer = pt111_heptamer()
    search = GODiff(heptamer, config)
    score, head = transfer.params_template(search)
    best = int(
        np.argmin(np.nanmin(np.where(state.archive.valid, state.archive.energies, np.inf), 1))
    )
    carried = transfer.load_pretrained(workdir, score, force_head_template=head)
    assert carried.meta["source"]["seed"] == [3, 5][best]  # the best seed by default
    chex.assert_trees_all_equal(carried.force_head, _seed_of(state, best).force_head)
    fresh = search.init_state(jax.random.PRNGKey(0), carried.params)
    kept = search.init_state(jax.random.PRNGKey(0), carried.params, carried.force_head)
    chex.assert_trees_all_equal(kept.force_head, carried.force_head)
    leaves = zip(
        jax.tree_util.tree_leaves(fresh.force_head),
        jax.tree_util.tree_leaves(kept.force_head),
        strict=True,
    )
    assert any(not np.array_equal(a, b) for a, b in leaves)
    # a plain run's parameter file has no force head to carry
    out = tmp_path / "p.msgpack"
    transfer.export_params(workdir, out)
    with pytest.raises(ValueError, match="no force head"):
        transfer.load_pretrained(out, score, force_head_template=head)


def test_parameter_files_of_another_version_or_model_size_are_refused(guided_run, tmp_path):
    workdir, _, _ = guided_run
    out = tmp_path / "p.msgpack"
    transfer.export_params(workdir, out, command="godiff export-params RUN p.msgpack")
    header, arrays = checkpoint.decode(out.read_bytes(), transfer.PARAMS_KIND)
    old = dict(header["meta"], params_version=0)
    stale = tmp_path / "stale.msgpack"
    stale.write_bytes(checkpoint.encode(transfer.PARAMS_KIND, transfer._nested(arrays), old))
    score, _ = transfer.params_template(GODiff(stepped_pt_adatom(), TINY))
    with pytest.raises(checkpoint.CheckpointError, match="version 0.*godiff export-params"):
        transfer.load_pretrained(stale, score)
    bigger, _ = transfer.params_template(GODiff(stepped_pt_adatom(), TINY.replace(features=16)))
    with pytest.raises(checkpoint.CheckpointError, match="leaf"):
        transfer.load_pretrained(out, bigger)
    with pytest.raises(FileNotFoundError, match="shipped models: adatom"):
        transfer.load_pretrained(tmp_path / "nowhere", score)


def test_shipped_adatom_model_loads_at_the_current_version():
    path = transfer.SHIPPED["adatom"]
    header, _ = checkpoint.decode(path.read_bytes(), transfer.PARAMS_KIND, str(path))
    meta = header["meta"]
    assert meta["params_version"] == transfer.PARAMS_VERSION
    assert meta["command"] and meta["commit"]  # how to regenerate it
    config = json.loads(meta["config"])
    assert config["model"]["features"] == 64 and config["model"]["n_blocks"] == 4
    score, _ = transfer.params_template(GODiff(pt111_heptamer()))
    got = transfer.load_pretrained("adatom", score)
    assert all(np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(got.params))


def test_experiment_flags_start_from_a_run(guided_run, tmp_path, capsys):
    workdir, _, _ = guided_run
    args = cli.experiment_parser("x", "runs/x").parse_args(
        ["--init-params", str(workdir), "--init-seed", "3"]
    )
    kwargs = cli.pretrained_start(stepped_pt_adatom(), TINY, args)
    assert kwargs["init_force_head"] is None
    assert '"seed": 3' in capsys.readouterr().out
    args = cli.experiment_parser("x", "runs/x").parse_args(
        ["--init-params", str(workdir), "--carry-force-head"]
    )
    with pytest.raises(SystemExit, match="guidance on"):
        cli.pretrained_start(stepped_pt_adatom(), TINY, args)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--quick"], "adatom"),  # the main job's quick preset starts from the shipped model
        (["--quick", "--from-scratch"], None),
        ([], None),  # the paper's plain heptamer starts fresh
    ],
)
def test_heptamer_quick_starts_from_the_shipped_adatom_model(monkeypatch, argv, expected):
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "experiments"))
    import heptamer

    seen = {}

    def fake_start(system, config, args):
        seen["init"] = args.init_params
        seen["kT_start"] = config.kT_start
        raise SystemExit(0)

    monkeypatch.setattr(cli, "pretrained_start", fake_start)
    with pytest.raises(SystemExit):
        heptamer.main(argv=argv)
    assert seen["init"] == expected
    assert seen["kT_start"] == (3.0 if "--quick" in argv else 5.0)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], "DEFAULT"), (["--preset", "paper"], "PAPER"), (["--quick"], "QUICK")],
)
def test_the_heptamer_runs_the_default_and_the_paper_settings_as_a_preset(
    monkeypatch, argv, expected
):
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "experiments"))
    import heptamer

    seen = {}

    def fake_start(system, config, args):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(cli, "pretrained_start", fake_start)
    with pytest.raises(SystemExit):
        heptamer.main(argv=argv)
    assert seen["config"] == getattr(heptamer, expected)
    with pytest.raises(SystemExit, match="--quick and --preset paper"):
        heptamer.main(argv=["--quick", "--preset", "paper"])
