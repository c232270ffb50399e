"""Scoring a finished run directory after the fact (godiff_jax.report, benchmarks/quality.py)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, run_emt

from godiff_jax import stepped_pt_adatom
from godiff_jax.report import best_curve, seed_rows, summarise


def test_best_curve_hand_computed():
    evaluation = np.array([1, 2, 4, 5])
    energy = np.array([3.0, 5.0, 1.5, 2.0])
    grid = np.array([1, 2, 3, 4, 6])
    np.testing.assert_allclose(best_curve(evaluation, energy, grid, 1.0), [2, 2, 2, 0.5, 0.5])
    assert np.isnan(best_curve(evaluation + 1, energy, np.array([1]), 0.0)[0])


def test_summary_counts_only_successes_within_budget():
    rows = [
        {
            "first_success_strict": 10,
            "seconds_to_success_strict": 5.0,
            "best_energy_above_min": 0.0,
            "loss_all_finite": True,
            "first_success_graph": 8,
            "seconds_to_success_graph": 4.0,
        },
        {
            "first_success_strict": 30,
            "seconds_to_success_strict": 9.0,
            "best_energy_above_min": 0.2,
            "loss_all_finite": True,
            "first_success_graph": 30,
            "seconds_to_success_graph": 9.0,
        },
        {
            "first_success_strict": None,
            "seconds_to_success_strict": None,
            "best_energy_above_min": 0.4,
            "loss_all_finite": False,
            "first_success_graph": 12,
            "seconds_to_success_graph": 6.0,
        },
    ]
    s = summarise(rows, 20, np.array([10, 20]), np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 2.0]]))
    assert s["successes_strict"] == 1 and s["mean_evaluation_at_success_strict"] == 10
    assert s["median_seconds_to_success_strict"] is None  # inf, inf, 5: median inf
    assert s["successes_graph"] == 2 and s["median_seconds_to_success_graph"] == 6.0
    assert s["mean_best_energy_above_min"] == pytest.approx(0.2)
    assert s["curve_mean_best_above_min"] == [2.0, 1.0] and not s["all_losses_finite"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    system = stepped_pt_adatom()
    workdir = tmp_path_factory.mktemp("run")

    def success(positions, energies, valid):  # "found" below 8 eV
        return valid & (np.asarray(energies) < 8.0)

    run_emt(system, TINY, workdir, seeds=[0, 1], progress=False, success_fn=success)
    return system, workdir


def test_rescoring_agrees_with_the_run(finished_run):
    system, workdir = finished_run
    tests = lambda x, e: {"strict": e < 8.0, "graph": e < 1e9}  # noqa: E731
    rows, grid, curves = seed_rows(workdir, system, tests, 5.0, budget=12, grid_step=4)
    assert [r["seed"] for r in rows] == [0, 1] and grid.tolist() == [4, 8, 12]
    for r in rows:
        assert r["first_success_strict"] == r["first_success_online"]
        assert r["first_success_graph"] == 1  # the first evaluated structure
        assert r["best_energy_above_min"] == pytest.approx(r["best_energy_by_iteration"][-1])
        assert r["loss_all_finite"] and r["n_skipped_steps"] == 0
    assert np.all(np.diff(curves, axis=1) <= 0)  # best-so-far only falls


def test_quality_script_writes_its_schema(finished_run, tmp_path):
    system, workdir = finished_run
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import quality

    quality.main(
        [
            "adatom",
            "--name",
            "t",
            "--score-only",
            "--workdir",
            str(workdir),
            "--seeds",
            "2",
            "--out",
            str(tmp_path),
            *sum(
                (["--set", f"{k}={v}"] for k, v in {"n_iterations": 2, "n_samples": 6}.items()), []
            ),
        ]
    )
    out = json.loads((tmp_path / "t.json").read_text())
    assert {"name", "commit", "machine", "settings", "summary", "rows", "curves"} <= set(out)
    assert out["summary"]["budget"] == 12 and out["summary"]["successes_graph"] is None
    assert len(out["rows"]) == 2 and (tmp_path / "t.png").stat().st_size > 1000
