"""The whole loop on tiny configs: end to end, resume, vmapped seeds, failing calculators."""

import json

import ase.db
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.calculators.emt import EMT
from conftest import TINY, TINY_ESS, run_emt

from godiff_jax import checkpoint, io, stepped_pt_adatom
from godiff_jax import runner as runner_module
from godiff_jax.evaluate import AseEvaluator
from godiff_jax.potentials.emt import emt_energy_fn
from godiff_jax.search import GODiff


@pytest.fixture(scope="module")
def system():
    return stepped_pt_adatom()


def _leaves_equal(a, b):
    chex.assert_trees_all_equal(a, b)  # same structure, every leaf bitwise equal


def test_two_iterations_end_to_end(system, tmp_path):
    state = run_emt(system, TINY, tmp_path, seeds=0, progress=False)
    assert int(state.iteration[0]) == 2
    # Adam's step count (its bias correction) runs on across iterations by default.
    assert int(_adam_count(state.train)[0]) == 2 * TINY.train_steps
    assert int(state.archive.count[0]) == 12
    n_eval = int(state.n_evaluations[0])
    assert 0 < n_eval <= 12
    rows = io.read_metrics(tmp_path)
    assert [r["iteration"] for r in rows] == [0, 1]
    assert rows[-1]["evaluations"] == n_eval
    assert np.isfinite(rows[-1]["best_energy"]) and np.isfinite(rows[-1]["loss_mean"])
    assert json.loads((tmp_path / "config.json").read_text())["sampler"]["n_samples"] == 6
    with ase.db.connect(tmp_path / "structures.db") as db:
        stored = list(db.select(valid=1))
        assert db.count() == n_eval  # every evaluated structure, valid or not
    assert len(stored) == int(np.sum(np.asarray(state.archive.valid[0])))
    row = stored[0]
    assert row.natoms == 21 and row.seed == 0 and row.iteration in (0, 1)
    assert {"kT", "weight", "evaluation"} <= set(row.key_value_pairs)
    assert row.forces.shape == (21, 3) and np.all(row.forces[:20] == 0)
    # stored energies are the archive's (JAX EMT, float32) and agree with ASE's EMT
    atoms = row.toatoms()
    e_db = row.energy
    atoms.calc = EMT()
    assert abs(atoms.get_potential_energy() - e_db) < 1e-3
    assert atoms.constraints and len(atoms.constraints[0].index) == 20


def test_first_success_is_counted_at_generation(system, tmp_path):
    calls = {"n": 0}

    def succeed_in_second_iteration(positions, energies, valid):
        calls["n"] += 1
        return np.full(len(positions), calls["n"] == 2)

    state = run_emt(
        system, TINY, tmp_path, seeds=0, success_fn=succeed_in_second_iteration, progress=False
    )
    first_row, second_row = io.read_metrics(tmp_path)
    assert first_row["first_success_evaluation"] is None
    # the first structure of iteration 1 that passed the distance check; its number
    # counts every evaluation so far (JAX EMT energies are all finite)
    assert np.any(np.asarray(state.archive.valid[0])[np.asarray(state.archive.iteration[0]) == 1])
    assert second_row["first_success_evaluation"] == first_row["evaluations"] + 1
    assert int(state.first_success[0]) == second_row["first_success_evaluation"]
    # the time is when the structure was evaluated, before that iteration's training
    expected = second_row["seconds_total"] - second_row["seconds_training"]
    assert second_row["first_success_seconds"] == pytest.approx(expected, rel=1e-5)
    assert second_row["first_success_seconds"] < second_row["seconds_total"]


CONTROLLED = TINY.replace(
    train_steps=40, train_stop=True, stop_warmup=2, stop_patience=3, adaptive_kT=True
)


def _check_controllers(rows):
    taken = [r["train_steps_taken"] for r in rows]
    assert all(2 + 3 <= n <= 40 for n in taken) and min(taken) < 40
    first, second = rows[0], rows[1]
    assert first["heat_capacity"] is None and first["kT"] > 0
    factor = 0.95 if second["heat_capacity"] > 1 else 0.5
    assert second["kT"] == pytest.approx(first["kT"] * factor, rel=1e-6)


GUIDED = TINY.replace(ffg=True, ffg_per_dt=False)
# Every issue-16 controller at once: the training stop, the adaptive kT, ESS-driven
# sampling (the run ends on its evaluation budget) and the ESS-sized buffer.
ALL_CONTROLLERS = CONTROLLED.replace(**{**TINY_ESS, "max_evaluations": 16, "n_iterations": 8})


@pytest.mark.parametrize(
    "config",
    [TINY, CONTROLLED, GUIDED, ALL_CONTROLLERS, TINY.replace(refine_fraction=0.5)],
    ids=["fixed", "controllers", "guidance", "all_controllers", "refinement"],
)
def test_resume_after_crash_equals_uninterrupted(system, tmp_path, config):
    full = run_emt(system, config, tmp_path / "full", seeds=3, progress=False)

    calls = {"n": 0}

    def crash_on_second_iteration(positions, energies, valid):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return np.zeros(len(positions), bool)

    with pytest.raises(KeyboardInterrupt):
        run_emt(
            system,
            config,
            tmp_path / "cut",
            seeds=3,
            success_fn=crash_on_second_iteration,
            progress=False,
        )
    header, _ = checkpoint.decode(
        (tmp_path / "cut" / checkpoint.CHECKPOINT).read_bytes(), "run-state"
    )
    assert header["meta"]["iteration"] == 1
    resumed = run_emt(system, config, tmp_path / "cut", seeds=3, progress=False)
    _leaves_equal(full.archive, resumed.archive)
    _leaves_equal(full.train.params, resumed.train.params)
    if config.guidance.ffg:  # the force head is part of the checkpoint, and was trained
        _leaves_equal(full.force_head, resumed.force_head)
        rows = io.read_metrics(tmp_path / "full")
        assert all(r["force_loss_last"] is not None for r in rows)
    if config.train_stop:  # the controllers did act: training stopped early, kT followed
        _check_controllers(io.read_metrics(tmp_path / "full"))
    # the interrupted iteration's partial rows were dropped: one row per evaluated structure
    with ase.db.connect(tmp_path / "cut" / "structures.db") as db:
        assert db.count(valid=1) == int(np.sum(np.asarray(resumed.archive.valid)))
    iterations = [r["iteration"] for r in io.read_metrics(tmp_path / "full")]
    assert [r["iteration"] for r in io.read_metrics(tmp_path / "cut")] == iterations
    if config.ess_sampling:  # the run went on until the budget, however many iterations
        assert len(iterations) > config.n_iterations // 4
        assert np.all(np.asarray(resumed.n_evaluations) == config.max_evaluations)


def test_resume_refuses_other_config(system, tmp_path):
    run_emt(system, TINY, tmp_path, seeds=0, max_iterations=1, progress=False)
    other = TINY.replace(n_samples=8)
    with pytest.raises(ValueError, match="different config"):
        run_emt(system, other, tmp_path, seeds=0, progress=False)


@pytest.mark.parametrize("seed_batch", [1, 2])  # seeds looped / vmapped in one program
def test_seeds_in_one_program_equal_separate_runs(system, tmp_path, seed_batch):
    both = run_emt(
        system, TINY, tmp_path / "both", seeds=[0, 1], progress=False, seed_batch=seed_batch
    )
    for i, seed in enumerate([0, 1]):
        one = run_emt(system, TINY, tmp_path / f"seed{seed}", seeds=seed, progress=False)
        np.testing.assert_array_equal(both.archive.valid[i], one.archive.valid[0])
        np.testing.assert_allclose(both.archive.positions[i], one.archive.positions[0], atol=1e-4)
        np.testing.assert_allclose(
            both.archive.energies[i], one.archive.energies[0], rtol=1e-5, equal_nan=True
        )
        for a, b in zip(
            jax.tree_util.tree_leaves(both.train.params),
            jax.tree_util.tree_leaves(one.train.params),
            strict=True,
        ):
            np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b)[0], atol=1e-5)


def test_seed_batch_reaches_the_compiled_phases(system, tmp_path, monkeypatch):
    # run_emt() must hand seed_batch on: the loop over seed groups (lax.map) is another program.
    seen = []
    compiled = runner_module.compiled_phases

    def spy(*args):
        seen.append(args[3:5])  # n_seeds, seed_batch
        return compiled(*args)

    monkeypatch.setattr(runner_module, "compiled_phases", spy)
    run_emt(system, TINY, tmp_path, seeds=[0, 1], progress=False, seed_batch=1, max_iterations=1)
    assert seen == [(2, 1)]
    loop = runner_module._over_seeds(lambda x: x * 2.0, 2, (0,), 1)
    vmapped = runner_module._over_seeds(lambda x: x * 2.0, 2, (0,), 2)
    x = np.ones((2, 3), np.float32)
    assert "scan" in str(jax.make_jaxpr(loop)(x)) and "scan" not in str(jax.make_jaxpr(vmapped)(x))
    np.testing.assert_array_equal(loop(x), vmapped(x))


class FlakyEMT(EMT):
    """Raises on every third structure and returns NaN on every fourth."""

    calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        FlakyEMT.calls += 1
        if FlakyEMT.calls % 3 == 0:
            raise RuntimeError("SCF did not converge")
        super().calculate(atoms, properties, system_changes or [])
        if FlakyEMT.calls % 4 == 0:
            self.results["energy"] = float("nan")


def test_failing_ase_calculator_does_not_stop_the_run(system, tmp_path):
    with pytest.warns(RuntimeWarning, match="marked invalid"):
        state = run_emt(
            system,
            TINY,
            tmp_path,
            seeds=0,
            evaluator=AseEvaluator(FlakyEMT(), n_workers=1),
            progress=False,
        )
    assert int(state.iteration[0]) == 2
    rows = io.read_metrics(tmp_path)
    assert sum(r["n_invalid_energy"] for r in rows) > 0
    valid = np.asarray(state.archive.valid[0])
    assert valid.sum() > 0
    assert np.all(np.isfinite(np.asarray(state.archive.energies[0])[valid]))
    assert np.all(np.isnan(np.asarray(state.archive.energies[0])[~valid]))
    for leaf in jax.tree_util.tree_leaves(state.train.params):
        assert np.all(np.isfinite(np.asarray(leaf)))


def _adam_count(train_state):
    import optax

    found = [
        s
        for s in jax.tree_util.tree_leaves(
            train_state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)
        )
        if isinstance(s, optax.ScaleByAdamState)
    ]
    return np.asarray(found[0].count)


def test_fresh_optimizer_per_iteration_when_asked(system, tmp_path):

    fresh = run_emt(
        system,
        TINY.replace(fresh_optimizer=True),
        tmp_path / "fresh",
        seeds=0,
        progress=False,
    )
    # A fresh optimizer each iteration: Adam's count restarts (the default keeps it, see
    # test_two_iterations_end_to_end).
    assert int(_adam_count(fresh.train)[0]) == TINY.train_steps
    assert int(fresh.train.step[0]) == 2 * TINY.train_steps


def test_non_finite_parameters_are_reported_not_counted_as_too_close(system, tmp_path, capsys):
    from godiff_jax.model import ScoreModel

    params = ScoreModel(system, TINY.model).init(jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda v: v * np.nan, params)
    run_emt(system, TINY, tmp_path, seeds=0, progress=False, init_params=params)
    rows = io.read_metrics(tmp_path)
    assert all(r["n_nonfinite_samples"] == TINY.n_samples for r in rows)
    assert all(r["n_too_close"] == 0 and r["params_finite"] is False for r in rows)
    assert all(r["n_skipped_steps"] == TINY.train_steps for r in rows)
    assert "NOT FINITE" in capsys.readouterr().out


def test_energy_floor_rejects_are_not_written_nor_successes(system, tmp_path):
    """One validity mask: structures below energy_floor are neither in structures.db as
    valid nor handed to the success test as valid."""
    seen = []

    def success(positions, energies, valid):
        seen.append((np.asarray(energies), np.asarray(valid)))
        return np.asarray(valid)  # every valid structure "succeeds"

    floor_at = 9.0  # eV: seed 0 of TINY samples 12 structures, 4 of them from 6.97 to 7.67 eV
    config = TINY.replace(energy_floor=floor_at)
    state = run_emt(system, config, tmp_path, seeds=0, progress=False, success_fn=success)
    with ase.db.connect(tmp_path / "structures.db") as db:
        stored = [row.energy for row in db.select(valid=1)]
        rejected_rows = [row for row in db.select(valid=0)]
    assert all(e > floor_at for e in stored)
    assert len(stored) == int(np.sum(np.asarray(state.archive.valid)))
    for energies, valid in seen:
        assert not np.any(valid & (energies <= floor_at))
    rows = io.read_metrics(tmp_path)
    rejected = sum(r["n_invalid_energy"] for r in rows)
    assert rejected == sum(r["n_sampled"] - r["n_too_close"] for r in rows) - len(stored)
    assert rejected >= 1 and len(stored) >= 1
    # the rejects are recorded, marked invalid with their reason
    assert len(rejected_rows) == rejected
    assert all(r.reason == "below energy_floor" and r.energy <= floor_at for r in rejected_rows)


def _one_iteration(system, config):
    search = GODiff(system, config)
    state = search.init_state(jax.random.PRNGKey(3))
    return search, jax.jit(lambda s: search.iteration(s, emt_energy_fn(system)))(state)


def test_uniform_loss_weights_train_on_the_same_draw_with_equal_weights(system):
    """The buffer is the same Efraimidis-Spirakis draw at kT; only its loss weights change:
    1 on each valid structure instead of the Boltzmann weights (which are not all 1)."""
    _, (_, boltz) = _one_iteration(system, TINY)
    _, (_, uni) = _one_iteration(system, TINY.replace(loss_weights="uniform"))
    np.testing.assert_array_equal(uni.buffer_energies, boltz.buffer_energies)
    np.testing.assert_array_equal(uni.buffer_valid, boltz.buffer_valid)
    np.testing.assert_array_equal(uni.buffer_weights, np.asarray(boltz.buffer_valid, float))
    assert np.ptp(np.asarray(boltz.buffer_weights)[np.asarray(boltz.buffer_valid)]) > 0.1


def test_polish_step_changes_training_not_the_draw(system):
    """With polish_step the buffer drawn and its weights are the same, the model trained
    on the moved structures differs; polish_step=0 is the unpolished run bitwise."""
    _, (plain, info) = _one_iteration(system, TINY)
    _, (off, _) = _one_iteration(system, TINY.replace(polish_step=0.0, polish_max_step=0.3))
    _, (on, info_on) = _one_iteration(system, TINY.replace(polish_step=0.05))
    _leaves_equal(plain.train.params, off.train.params)
    np.testing.assert_array_equal(info_on.buffer_weights, info.buffer_weights)
    diff = jax.tree_util.tree_map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))), plain.train.params, on.train.params
    )
    assert max(jax.tree_util.tree_leaves(diff)) > 0


def test_refinement_starts_from_the_lowest_archived_structures(system):
    """refine_fraction 0.5 of 6 samples: rows 1, 3, 5 start at refine_t0 from the pool of
    the 2 lowest valid archived structures, in turn; the other rows, and every row while the
    archive is empty, start from the prior at t = 1."""
    from godiff_jax.buffer import add_to_archive
    from godiff_jax.sde import sample_prior

    config = TINY.replace(refine_fraction=0.5, refine_t0=1e-6, refine_pool=2)
    search = GODiff(system, config)
    state = search.init_state(jax.random.PRNGKey(3))
    _, t_start = search._refine_starts(state)
    np.testing.assert_array_equal(t_start, np.ones(6))
    x = sample_prior(jax.random.PRNGKey(1), system, 4)
    energies = jnp.array([3.0, 1.0, -5.0, 2.0])
    valid = jnp.array([True, True, False, True])  # the -5 eV structure is not valid
    archive = add_to_archive(state.archive, x, energies, jnp.zeros_like(x), valid, 0)
    starts, t_start = search._refine_starts(state._replace(archive=archive))
    np.testing.assert_allclose(t_start, [1, 1e-6, 1, 1e-6, 1, 1e-6], rtol=1e-6)
    # noise of std sqrt(var(1e-6)) ~ 1.4e-4 Å; slot 1 (the 2 eV one), 0 (1 eV), 1 in turn
    np.testing.assert_allclose(starts[1::2], x[jnp.array([3, 1, 3])], atol=2e-3)
    prior = sample_prior(jax.random.split(jax.random.fold_in(state.key, 3))[0], system, 6)
    np.testing.assert_array_equal(starts[0::2], prior[0::2])


def test_a_run_with_refinement_keeps_its_evaluations_finite(system):
    _, (state, info) = _one_iteration(system, TINY.replace(refine_fraction=0.5))
    search = GODiff(system, TINY.replace(refine_fraction=0.5))
    x, ok = jax.jit(search.sample)(state)
    assert np.all(np.isfinite(np.asarray(x))) and bool(np.any(ok))
