"""Checkpoints hold arrays only: no unpickling, versioned, verified, with a fallback."""

import json
import pickle
import random

import chex
import jax
import numpy as np
import pytest
from conftest import TINY, run_emt

from godiff_jax import checkpoint, stepped_pt_adatom
from godiff_jax.model import ScoreModel

TINY3 = TINY.replace(n_iterations=3)


@pytest.fixture(scope="module")
def system():
    return stepped_pt_adatom()


class _Payload:
    """Unpickling this touches a file: the stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _leaves_equal(a, b):
    chex.assert_trees_all_equal(a, b)  # same structure, every leaf bitwise equal


@pytest.mark.parametrize("name", [checkpoint.CHECKPOINT, checkpoint.LEGACY_CHECKPOINT])
def test_pickle_checkpoint_is_refused_and_its_code_never_runs(system, tmp_path, name):
    marker = tmp_path / "code_ran"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / name).write_bytes(pickle.dumps({"state": _Payload(marker)}))
    with pytest.raises(checkpoint.CheckpointError, match="pickle.*--trust-pickle"):
        run_emt(system, TINY3, tmp_path / "run", seeds=0, progress=False)
    assert not marker.exists()


def test_truncated_checkpoint_falls_back_and_resume_matches(system, tmp_path):
    full = run_emt(system, TINY3, tmp_path / "full", seeds=0, progress=False)
    run_emt(system, TINY3, tmp_path / "cut", seeds=0, progress=False, max_iterations=2)
    latest = tmp_path / "cut" / checkpoint.CHECKPOINT
    data = latest.read_bytes()
    cut = random.Random(0).randrange(1, len(data))
    latest.write_bytes(data[:cut])  # a copy cut short at a random byte
    with pytest.warns(UserWarning, match="truncated.*previous checkpoint.*iteration 1"):
        resumed = run_emt(system, TINY3, tmp_path / "cut", seeds=0, progress=False)
    _leaves_equal(full.archive, resumed.archive)
    _leaves_equal(full.train.params, resumed.train.params)
    # A damaged byte (same length) is caught by the hash.
    data = latest.read_bytes()
    damaged = data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:]
    with pytest.raises(checkpoint.CorruptCheckpoint, match="hash"):
        checkpoint.decode(damaged, "run-state")


def test_format_version_mismatch_says_what_to_do():
    data = checkpoint.encode("score-params", {"w": np.ones(2, np.float32)}, {})
    for version, hint in ((checkpoint.FORMAT_VERSION + 1, "Upgrade"), (0, "version that wrote")):
        bumped = data.replace(
            b'"format_version": %d' % checkpoint.FORMAT_VERSION, b'"format_version": %d' % version
        )
        with pytest.raises(checkpoint.CheckpointError, match=f"format {version}.*{hint}"):
            checkpoint.decode(bumped, "score-params")
    header, arrays = checkpoint.decode(data, "score-params")
    assert header["package_version"] and np.array_equal(arrays["['w']"], np.ones(2))


def test_parameters_of_the_wrong_shape_are_refused_naming_the_leaf(system, tmp_path):
    wide = ScoreModel(system, TINY3.replace(features=16).model)
    with pytest.raises(
        checkpoint.CheckpointError,
        match=r"leaf \['embedding'\]\['embedding'\] has shape \(101, 16\)",
    ):
        run_emt(
            system,
            TINY3,
            tmp_path / "r",
            seeds=0,
            progress=False,
            init_params=wide.init(jax.random.PRNGKey(0)),
        )
    # A parameters file round-trips, and a run's checkpoint serves as one (transfer).
    model = ScoreModel(system, TINY3.model)
    params = model.init(jax.random.PRNGKey(1))
    checkpoint.save_params(tmp_path / "p.msgpack", params)
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    _leaves_equal(params, checkpoint.load_params(tmp_path / "p.msgpack", template))
    with pytest.raises(checkpoint.CheckpointError, match="leaf"):
        checkpoint.load_params(
            tmp_path / "p.msgpack", jax.eval_shape(wide.init, jax.random.PRNGKey(0))
        )
    # (TINY over seeds [0, 1]: the program test_report and test_search also run)
    state = run_emt(system, TINY, tmp_path / "s", seeds=[0, 1], progress=False, max_iterations=1)
    got = checkpoint.load_params(tmp_path / "s" / checkpoint.CHECKPOINT, template)
    _leaves_equal(jax.tree_util.tree_map(lambda v: v[0], state.train.params), got)


def test_legacy_converter_needs_the_users_word(system, tmp_path, monkeypatch):
    import shutil

    from godiff_jax import legacy
    from godiff_jax import search as search_module

    with pytest.raises(SystemExit, match="trust-pickle"):
        legacy.main([str(tmp_path)])
    # A run directory as an older version left it: checkpoint.pkl of host arrays.
    state = run_emt(system, TINY3, tmp_path / "new", seeds=0, progress=False, max_iterations=1)
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    for name in (checkpoint.CHECKPOINT, checkpoint.PREVIOUS):
        (tmp_path / "old" / name).unlink(missing_ok=True)
    # Pickled as the old godiff_jax.search.RunState was: the clock inside, no kT yet.
    old_class = type("RunState", (legacy.LegacyRunState,), {"__module__": "godiff_jax.search"})
    host = jax.tree_util.tree_map(np.asarray, state)
    old = old_class(
        *host[:6], first_success_s=np.array([12.5], np.float32), elapsed_s=np.array([40.0])
    )
    with monkeypatch.context() as m:
        m.setattr(search_module, "RunState", old_class)
        with open(tmp_path / "old" / checkpoint.LEGACY_CHECKPOINT, "wb") as f:
            pickle.dump({"seeds": [0], "iteration": 1, "state": old}, f)
    with pytest.raises(checkpoint.CheckpointError, match="--trust-pickle"):
        run_emt(system, TINY3, tmp_path / "old", seeds=0, progress=False)
    legacy.main([str(tmp_path / "old"), "--trust-pickle"])
    template = jax.eval_shape(lambda: state)
    got, meta = checkpoint.load_checkpoint(tmp_path / "old", template)
    clock = {"elapsed_s": [40.0], "first_success_s": [12.5]}
    assert meta == {"seeds": [0], "iteration": 1, "clock": clock}
    assert np.isnan(np.asarray(got.kT)).all()
    _leaves_equal(state.archive, got.archive)
    _leaves_equal(state.train.params, got.train.params)


def test_checkpoint_with_the_clock_in_the_state_resumes(system, tmp_path):
    """A msgpack checkpoint written while RunState held elapsed_s / first_success_s (the
    clock) resumes: the clock moves to the metadata and the time keeps counting."""
    from godiff_jax import io, legacy

    full = run_emt(system, TINY3, tmp_path / "full", seeds=0, progress=False)
    state = run_emt(system, TINY3, tmp_path / "old", seeds=0, progress=False, max_iterations=1)
    old = legacy.LegacyRunState(
        *jax.tree_util.tree_map(np.asarray, state)[:6],
        first_success_s=np.array([np.nan], np.float32),
        elapsed_s=np.array([1000.0], np.float32),
        kT=np.asarray(state.kT),
    )
    checkpoint.save_checkpoint(tmp_path / "old", old, {"seeds": [0], "iteration": 1})
    # ... and its config.json was flat then: it still names the same settings.
    flat = {
        k: v
        for section in TINY3.to_dict().values()
        if isinstance(section, dict)
        for k, v in section.items()
    }
    (tmp_path / "old" / "config.json").write_text(json.dumps({"n_iterations": 3, **flat}))
    resumed = run_emt(system, TINY3, tmp_path / "old", seeds=0, progress=False)
    _leaves_equal(full.archive, resumed.archive)
    rows = io.read_metrics(tmp_path / "old")
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert rows[1]["seconds_total"] > 1000.0
