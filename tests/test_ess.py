"""The ESS controllers (issue 16 (c)) on hand-computed cases, and a run with them."""

import jax.numpy as jnp
import numpy as np
import pytest
from ase.calculators.emt import EMT
from conftest import TINY, TINY_ESS, run_emt

from godiff_jax import ess, io, stepped_pt_adatom
from godiff_jax.buffer import Buffer, truncate_buffer
from godiff_jax.evaluate import AseEvaluator
from godiff_jax.runner import run
from godiff_jax.schedule import budget_temperature

LN2 = float(np.log(2.0))


def test_effective_sample_size_of_known_weights():
    # kT 0.5 eV; E - E_min = 0, 0, 0.5 ln 2, 0.5 ln 4 -> w = 1, 1, 1/2, 1/4
    e = jnp.array([3.0, 3.0, 3.0 + 0.5 * LN2, 3.0 + LN2, 99.0])
    valid = jnp.array([True, True, True, True, False])
    w = np.array([1, 1, 0.5, 0.25])
    expected = w.sum() ** 2 / (w**2).sum()  # 2.75^2 / 2.3125 = 3.2703
    assert float(ess.effective_sample_size(e, valid, 0.5)) == pytest.approx(expected, rel=1e-6)
    assert float(ess.effective_sample_size(e, jnp.zeros(5, bool), 0.5)) == 0.0
    # equal energies: the count; one far below the rest: 1
    assert float(ess.effective_sample_size(jnp.zeros(6), jnp.ones(6, bool), 0.1)) == pytest.approx(
        6
    )
    far = jnp.array([0.0, 10.0, 10.0])
    assert float(ess.effective_sample_size(far, jnp.ones(3, bool), 0.1)) == pytest.approx(1.0)


def test_ess_temperature_closed_form_and_limits():
    # Two structures Delta = 1 eV apart: ESS = (1 + w)^2 / (1 + w^2), w = exp(-1 / kT);
    # ESS 1.5 <=> w^2 - 4w + 1 = 0 <=> w = 2 - sqrt(3), kT = -1 / ln(2 - sqrt(3)).
    e, valid = jnp.array([0.0, 1.0, 50.0]), jnp.array([True, True, False])
    kT = float(ess.ess_temperature(e, valid, 1.5))
    assert kT == pytest.approx(-1.0 / np.log(2.0 - np.sqrt(3.0)), rel=1e-5)  # 0.75933 eV
    assert float(ess.effective_sample_size(e, valid, kT)) == pytest.approx(1.5, rel=1e-5)
    assert float(ess.ess_temperature(e, valid, 2.5)) == 0.0  # two valid: ESS 2.5 unreachable
    assert float(ess.ess_temperature(e, valid, 1.5, kT_hi=0.5)) == pytest.approx(0.5)  # capped
    assert float(ess.ess_temperature(e, valid, 1.0, kT_lo=0.01)) == pytest.approx(0.01)
    spread = jnp.linspace(0.0, 5.0, 100)
    kT16 = ess.ess_temperature(spread, jnp.ones(100, bool), 16.0)
    assert float(ess.effective_sample_size(spread, jnp.ones(100, bool), kT16)) == pytest.approx(
        16.0, rel=1e-4
    )


def test_kT_ess_floor_raises_a_cold_schedule(system, tmp_path):
    from godiff_jax.report import read_evaluated

    config = TINY.replace(n_iterations=3, kT_start=1.0, kT_end=1e-3, kT_ess_floor=2.0)
    run_emt(system, config, tmp_path, seeds=[0], progress=False)
    seen = read_evaluated(tmp_path, system)[0]
    schedule = config.kT_schedule()
    for r in io.read_metrics(tmp_path):
        # The floor from every valid energy archived up to this iteration, capped at kT_start.
        archived = seen["iteration"] <= r["iteration"]
        e = jnp.asarray(seen["energy"][archived], jnp.float32)
        floor = float(ess.ess_temperature(e, jnp.ones(e.shape, bool), 2.0, kT_hi=1.0))
        assert r["kT"] == pytest.approx(max(schedule[r["iteration"]], floor), rel=1e-5)
        assert r["iteration"] == 0 or r["kT"] > 1e-3  # the cold schedule was raised
    for bad in (0.5, float("inf")):
        with pytest.raises(ValueError, match="kT_ess_floor must be a finite ESS of at least 1"):
            TINY.replace(kT_ess_floor=bad)


def test_chunks_until_the_target_then_the_budget():
    # chunks of 2 at kT 1: ESS after chunk 1 = 1 (second is 20 eV up), chunk 2 = 2, chunk 3 = 4
    e = jnp.array([0.0, 20.0, 0.0, 20.0, 0.0, 0.0, 0.0, 0.0])
    ok = jnp.ones(8, bool)
    kept = lambda target, remaining, kT=1.0: np.asarray(  # noqa: E731
        ess.kept_samples(e, ok, jnp.float32(kT), 2, target, 4, jnp.int32(remaining))
    )
    assert kept(2.0, 99).tolist() == [True] * 4 + [False] * 4
    assert kept(3.0, 99).tolist() == [True] * 6 + [False] * 2
    assert kept(100.0, 99).all()  # never reached: every chunk
    assert kept(3.0, 5).tolist() == [True] * 5 + [False] * 3  # the budget cuts inside a chunk
    assert kept(3.0, 99, kT=np.nan).tolist() == [True] * 4 + [False] * 4  # first iteration
    # a structure not evaluated (distance filter) is not kept and not counted
    holes = ok.at[0].set(False)
    got = ess.kept_samples(e, holes, jnp.float32(1.0), 2, 2.0, 4, jnp.int32(99))
    assert np.asarray(got).tolist() == [False] + [True] * 5 + [False] * 2


def test_buffer_size_follows_the_average_ess():
    size, avg = ess.buffer_size(jnp.float32(np.nan), jnp.float32(10.0), 0.8, 4.0, 16, 512)
    assert (int(size), float(avg)) == (40, 10.0)
    size, avg = ess.buffer_size(avg, jnp.float32(20.0), 0.8, 4.0, 16, 512)
    assert float(avg) == pytest.approx(12.0) and int(size) == 48
    assert int(ess.buffer_size(avg, jnp.float32(1.0), 0.0, 4.0, 16, 512)[0]) == 16
    assert int(ess.buffer_size(avg, jnp.float32(900.0), 0.0, 4.0, 16, 512)[0]) == 512


def test_truncated_buffer_keeps_the_first_entries_renormalised():
    k = 5
    buf = Buffer(
        positions=jnp.zeros((k, 1, 3)),
        energies=jnp.array([0.0, 0.1, 0.2, 0.3, 0.4]),
        forces=jnp.zeros((k, 1, 3)),
        weights=jnp.ones(k),
        valid=jnp.ones(k, bool),
        index=jnp.arange(k),
    )
    out = truncate_buffer(buf, jnp.int32(2), 0.1)
    assert np.asarray(out.valid).tolist() == [True, True, False, False, False]
    w = np.array([1.0, np.exp(-1.0)])
    np.testing.assert_allclose(np.asarray(out.weights)[:2], 2 * w / w.sum(), rtol=1e-6)
    assert np.all(np.asarray(out.weights)[2:] == 0)


def test_budget_temperature_hand_computed():
    t = budget_temperature(4.0, 0.04, n_first=10, budget=110)
    kT = lambda n: float(t.update(t.init(), jnp.int32(n), None, None)[0])  # noqa: E731
    assert kT(10) == pytest.approx(4.0)
    assert kT(60) == pytest.approx(0.4, rel=1e-6)  # halfway in log: sqrt(4 * 0.04)
    assert kT(110) == pytest.approx(0.04, rel=1e-6)
    assert kT(500) == pytest.approx(0.04, rel=1e-6)


ESS = TINY.replace(**TINY_ESS)


@pytest.fixture(scope="module")
def system():
    return stepped_pt_adatom()


def test_ess_run_spends_the_budget_exactly_and_counts_what_it_keeps(system, tmp_path):
    state = run_emt(system, ESS, tmp_path, seeds=[0, 1], progress=False)
    assert np.all(np.asarray(state.n_evaluations) == 20)
    rows = io.read_metrics(tmp_path)
    for seed in (0, 1):
        mine = [r for r in rows if r["seed"] == seed]
        assert mine[0]["evaluations"] + mine[0]["n_too_close"] == 4  # ess_first
        assert mine[-1]["evaluations"] == 20 and mine[-2]["evaluations"] < 20  # then it stops
        archived = int(np.sum(np.asarray(state.archive.valid[seed])))
        assert archived == 20  # JAX EMT energies are finite: every kept one archived
        for r in mine:
            assert 2 <= r["n_buffer"] <= 8
            kept = 8 - r["n_too_close"] - r["n_not_kept"] if r["iteration"] else 4
            assert kept >= 0


class CountingEMT(EMT):
    calls = 0

    def calculate(self, *args, **kwargs):
        CountingEMT.calls += 1
        super().calculate(*args, **kwargs)


def test_host_evaluator_computes_only_the_kept_chunks(system, tmp_path):
    """A host calculator evaluates chunk by chunk: every call is a counted evaluation, and
    the run keeps what the in-jit evaluation of the same seeds keeps."""
    CountingEMT.calls = 0
    evaluator = AseEvaluator(CountingEMT(), n_workers=1)
    host = run(system, ESS, tmp_path / "host", evaluator=evaluator, seeds=[0], progress=False)
    jitted = run_emt(system, ESS, tmp_path / "jit", seeds=[0], progress=False)
    assert CountingEMT.calls == int(host.n_evaluations[0]) == 20
    kept = lambda d: [(r["iteration"], r["evaluations"]) for r in io.read_metrics(d)]  # noqa: E731
    assert kept(tmp_path / "host") == kept(tmp_path / "jit")
    with_ess = np.asarray(jitted.archive.valid[0]), np.asarray(host.archive.valid[0])
    np.testing.assert_array_equal(*with_ess)
