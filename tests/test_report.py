"""Scoring a finished run directory after the fact (godiff_jax.report, benchmarks/quality.py)."""

import json
import subprocess
import sys
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
from conftest import TINY, run_emt

from godiff_jax import io, stepped_pt_adatom
from godiff_jax.analysis import (
    ADATOM_EMT_MINIMUM,
    HEPTAMER_EMT_MINIMUM,
    adatom_success,
    stepped_pt_adatom_minimum_sites,
)
from godiff_jax.plots import success_fraction
from godiff_jax.report import (
    adatom_landscape,
    best_curve,
    known_minimum,
    paired_successes,
    run_system,
    seed_rows,
    strict_tests,
    summarise,
    write_report,
)
from godiff_jax.system import make_surface_system


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


def test_paired_successes_mcnemar_hand_computed():
    def rows(hits):  # first strict success per seed (None: never)
        return [{"seed": s, "first_success_strict": h} for s, h in enumerate(hits)]

    a = rows([100, None, None, None, 900, None, None, 3000])
    b = rows([200, 300, 400, 500, None, None, None, None])
    # budget 2560: seed 7's success at 3000 does not count. Discordant: a only on seed 4,
    # b only on seeds 1-3; p = 2 (C(4,0) + C(4,1)) / 2^4 = 0.625
    out = paired_successes(a, b, 2560)
    assert out == {"both": 1, "only_a": 1, "only_b": 3, "neither": 3, "p_two_sided": 0.625}
    # b better on all 3 discordant seeds: p = 2 / 2^3
    assert paired_successes(rows([None] * 3), rows([1, 2, 3]), 10)["p_two_sided"] == 0.25
    assert paired_successes(rows([1]), rows([1]), 10)["p_two_sided"] == 1.0
    with pytest.raises(ValueError, match="not paired"):
        paired_successes(rows([1, 2]), rows([1]), 10)


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


def test_success_fraction_hand_computed():
    # successes at 100 and 300 of 4 seeds; one after the budget does not count
    x, frac = success_fraction([300, None, 100, 700], budget=500)
    assert x.tolist() == [0, 100, 300, 500]
    np.testing.assert_allclose(frac, [0.0, 0.25, 0.5, 0.5])
    x, frac = success_fraction([None, None], budget=64)
    assert x.tolist() == [0, 64] and frac.tolist() == [0.0, 0.0]


def test_known_minimum_only_for_emt_energies():
    assert known_minimum("adatom", 5.9) == ADATOM_EMT_MINIMUM
    assert known_minimum("heptamer", 25.3) == HEPTAMER_EMT_MINIMUM
    assert known_minimum("heptamer", -412.0) is None  # another energy model's energies
    assert known_minimum(None, 5.9) is None


def test_strict_tests_stop_at_the_first_chunk_with_a_success():
    system = stepped_pt_adatom()
    x = np.tile([[[0.5, 0.5, 9.0]]], (300, 1, 1))  # far above the slab: no success
    x[[100, 280], 0] = stepped_pt_adatom_minimum_sites()
    e = np.full(300, 50.0)
    ok = strict_tests("adatom", system)(x, e)
    assert np.flatnonzero(ok["strict"]).tolist() == [100] and ok["graph"] is None
    x[100, 0] = [0.5, 0.5, 9.0]  # the one at 280 is then found, in the second chunk
    assert np.flatnonzero(strict_tests("adatom", system)(x, e)["strict"]).tolist() == [280]
    assert strict_tests(None, system)(x, e) == {"strict": None, "graph": None}


def test_adatom_landscape_finds_the_minimum_sites():
    """The z-relaxed map's lowest placement lies next to a minimum site, near its energy."""
    system = stepped_pt_adatom()
    land = adatom_landscape(system, 24, 16)
    i = np.unravel_index(np.argmin(land["energy"]), land["energy"].shape)
    xy = land["frac"][i] @ land["cell"]
    site = stepped_pt_adatom_minimum_sites()[:, :2]
    assert np.min(np.linalg.norm(site - xy, axis=1)) < 0.5  # grid spacing ~0.35 Å
    assert 0.0 <= land["energy"][i] - ADATOM_EMT_MINIMUM < 0.05
    assert land["energy"].max() - ADATOM_EMT_MINIMUM > 1.0  # on top of slab atoms


def test_run_system_is_read_off_the_database(finished_run, tmp_path):
    system, workdir = finished_run
    found, name = run_system(workdir)
    assert name == "adatom" and found.n_template == 20 and found.formula == "Pt"
    # another system on the same slab: rebuilt from the stored structure, not a built-in
    other = make_surface_system(system.template_atoms(), "Cu2", (0.5, 4.0))
    x = system.template_positions[-2:] + [0.0, 0.0, 2.5]
    io.write_evaluation(tmp_path, other, x, 1.0, np.zeros((2, 3)), {"seed": 0, "evaluation": 1})
    found, name = run_system(tmp_path)
    assert name is None and found.n_template == 20 and found.mobile_numbers.tolist() == [29, 29]
    np.testing.assert_allclose(found.template_positions, system.template_positions)


def _summary_rows(text):
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0].isdigit():
            rows[int(parts[0])] = parts
    return rows


def test_report_writes_figures_summary_and_structures(finished_run, tmp_path, capsys):
    from godiff_jax.cli import main

    system, workdir = finished_run
    out = tmp_path / "rep"
    main(["report", str(workdir), "--out", str(out)])
    printed = capsys.readouterr().out
    for name in ("best_energy.png", "success_fraction.png", "figure1_adatom.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    text = (out / "summary.txt").read_text()
    assert text in printed and f"minimum: {ADATOM_EMT_MINIMUM} eV" in text

    metrics = io.read_metrics(workdir)
    last = {
        s: max((r for r in metrics if r["seed"] == s), key=lambda r: r["iteration"]) for s in (0, 1)
    }
    # the first success by the adatom test, straight from the database rows
    with ase.db.connect(workdir / io.DATABASE) as db:
        db_rows = sorted(db.select(), key=lambda r: (r.seed, r.evaluation))
    table = _summary_rows(text)
    assert sorted(table) == [0, 1]
    for seed, parts in table.items():
        evaluations, iterations, best, above, hit = parts[1:]
        assert int(evaluations) == last[seed]["evaluations"] and int(iterations) == 2
        assert float(best) == pytest.approx(last[seed]["best_energy"], abs=1e-6)
        assert float(above) == pytest.approx(
            last[seed]["best_energy"] - ADATOM_EMT_MINIMUM, abs=1e-6
        )
        mine = [r for r in db_rows if r.seed == seed and r.get("valid", True)]
        ok = [
            r.evaluation
            for r in mine
            if adatom_success(system, r.positions[None, system.n_template :], r.energy)[0]
        ]
        assert hit == (str(ok[0]) if ok else "-")

        atoms = ase.io.read(out / f"best_seed{seed}.extxyz")
        assert len(atoms) == system.n_atoms == 21
        assert atoms.get_potential_energy() == pytest.approx(last[seed]["best_energy"], abs=1e-6)
        best_row = min(mine, key=lambda r: r.energy)
        np.testing.assert_allclose(atoms.positions, best_row.positions, atol=1e-8)
        np.testing.assert_allclose(atoms.get_forces(), best_row.forces, atol=1e-8)
        assert np.abs(atoms.get_forces()[-1]).max() > 0 and atoms.info["seed"] == seed
    overall = min(last.values(), key=lambda r: r["best_energy"])
    assert f"overall best: {overall['best_energy']:.6f} eV, seed {overall['seed']}," in text


def test_report_of_a_directory_without_a_run_fails(tmp_path, capsys):
    from godiff_jax.cli import main

    with pytest.raises(
        ValueError, match=f"{tmp_path} holds no run: no metrics.jsonl and no structures.db"
    ):
        write_report(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["report", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"godiff report: error: {tmp_path} holds no run")
    (tmp_path / io.METRICS).write_text("")
    with pytest.raises(ValueError, match="no structures.db$"):
        write_report(tmp_path)
    # the module entry point answers the same, as a command
    out = subprocess.run(
        [sys.executable, "-m", "godiff_jax.report", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "missing is not a directory" in out.stderr


def test_table1_paper_rows_must_be_the_paper_settings():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import table1

    from godiff_jax.config import DEFAULT_SETTINGS, PAPER_SETTINGS

    paper = {"settings": PAPER_SETTINGS["heptamer"].to_dict(), "init_params": None}
    table1.check_paper_row("GO-Diff", paper, "p.json")
    fast = {"settings": DEFAULT_SETTINGS["heptamer"].to_dict(), "init_params": None}
    table1.check_paper_row("GO-Diff, default settings", fast, "f.json")  # not a paper row
    with pytest.raises(SystemExit, match=r"f.json: the 'GO-Diff' row .*'training.train_steps'"):
        table1.check_paper_row("GO-Diff", fast, "f.json")
    with pytest.raises(
        SystemExit, match="'GO-Diff \\+ FFG' row .*'guidance.ffg': \\(False, True\\)"
    ):
        table1.check_paper_row("GO-Diff + FFG", paper, "p.json")
    with pytest.raises(SystemExit, match="from a trained model"):
        transfer = PAPER_SETTINGS["heptamer"].replace(kT_start=3.0, n_samples=64, train_steps=16000)
        table1.check_paper_row(
            "GO-Diff + Transfer", {"settings": transfer.to_dict(), "init_params": None}, "t.json"
        )


def test_quality_table_pools_seed_sets_of_one_arm():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import quality_table

    from godiff_jax.config import DEFAULT_SETTINGS

    def result(name, seeds, hits, settings=DEFAULT_SETTINGS["heptamer"]):
        rows = [
            {
                "seed": s,
                "first_success_strict": h,
                "first_success_graph": h,
                "seconds_to_success_strict": None if h is None else 10.0,
                "seconds_to_success_graph": None if h is None else 10.0,
                "best_energy_above_min": 0.1 * s,
                "loss_all_finite": True,
            }
            for s, h in zip(seeds, hits, strict=True)
        ]
        summary = {"budget": 100, "successes_graph": 0, "curve_evaluations": [50, 100]}
        return {
            "name": name,
            "system": "heptamer",
            "commit": "a" * 40,
            "dirty": False,
            "command": name,
            "settings": settings.to_dict(),
            "init_params": None,
            "summary": summary,
            "rows": rows,
            "curves": [[1.0, 0.5]] * len(seeds),
        }

    pooled = quality_table.pool([result("a", [0, 1], [40, None]), result("b", [2, 3], [90, 120])])
    s = pooled["summary"]
    # seed 3's success at 120 lies past the budget of 100
    assert (s["n_seeds"], s["successes_strict"], s["mean_evaluation_at_success_strict"]) == (
        4,
        2,
        65.0,
    )
    assert s["mean_best_energy_above_min"] == pytest.approx(0.15)
    assert pooled["name"] == "a+b" and s["median_seconds_to_success_strict"] is None
    other = DEFAULT_SETTINGS["heptamer"].replace(train_steps=1000)
    with pytest.raises(SystemExit, match="train_steps"):
        quality_table.pool([result("a", [0], [1]), result("c", [1], [1], other)])
    with pytest.raises(SystemExit, match="twice"):
        quality_table.pool([result("a", [0], [1]), result("b", [0], [1])])
    # a pooled reference pairs with an arm run on one of its seed sets, on those seeds only
    ref = quality_table.pool([result("a", [0, 1], [40, None]), result("b", [2, 3], [90, 20])])
    arm = result("c", [3, 2], [None, 30])
    on = quality_table.rows_on_seeds_of(ref, arm)
    assert [r["seed"] for r in on] == [3, 2]
    assert paired_successes(on, arm["rows"], 100) == {
        "both": 1,
        "only_a": 1,
        "only_b": 0,
        "neither": 0,
        "p_two_sided": 1.0,
    }
    assert quality_table.rows_on_seeds_of(ref, result("d", [3, 4], [1, 1])) is None
    assert quality_table.rows_on_seeds_of(ref, dict(arm, system="adatom")) is None
