"""The evaluator protocol: JAX and ASE evaluators agree, stream results, reuse known ones."""

import concurrent.futures

import numpy as np
import pytest
from ase.calculators.emt import EMT

from godiff_jax import stepped_pt_adatom
from godiff_jax.evaluate import REJECTED, AseEvaluator, JaxEvaluator, Result
from godiff_jax.potentials.emt import emt_energy_fn
from godiff_jax.sde import sample_prior


class CountingEMT(EMT):
    calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        CountingEMT.calls += 1
        super().calculate(atoms, properties, system_changes or [])


class BrokenEMT(EMT):
    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        raise RuntimeError("SCF did not converge")


@pytest.fixture(scope="module")
def batch():
    import jax

    system = stepped_pt_adatom()
    x = np.asarray(sample_prior(jax.random.PRNGKey(0), system, 5), float)
    return system, x, np.array([True, True, False, True, True])


def test_jax_and_ase_evaluators_agree_and_mask_rejected(batch):
    system, x, valid = batch
    jx = JaxEvaluator(emt_energy_fn(system))(system, x, valid)
    with AseEvaluator(EMT(), n_workers=1) as ev:
        serial = ev(system, x, valid)
    for out in (jx, serial):
        assert out.valid.tolist() == valid.tolist()
        assert out.reasons[2] == REJECTED and np.isnan(out.energies[2])
    np.testing.assert_allclose(jx.energies[valid], serial.energies[valid], atol=1e-8)
    np.testing.assert_allclose(jx.forces[valid], serial.forces[valid], atol=1e-7)


def test_any_executor_streams_results_in_any_order(batch):
    system, x, valid = batch
    seen = []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        out = AseEvaluator(EMT(), executor=pool)(
            system, x, valid, on_result=lambda i, r: seen.append(i)
        )
    with AseEvaluator(EMT(), n_workers=1) as ev:
        serial = ev(system, x, valid)
    assert sorted(seen) == [0, 1, 3, 4]  # each new result, once, as it came
    np.testing.assert_array_equal(out.energies, serial.energies)


def test_known_results_are_not_recomputed(batch):
    system, x, valid = batch
    with AseEvaluator(CountingEMT(), n_workers=1) as ev:
        first = ev(system, x, valid)
        known = {0: Result(first.energies[0], first.forces[0]), 3: Result(-1.0, first.forces[3])}
        CountingEMT.calls = 0
        seen = []
        again = ev(system, x, valid, known=known, on_result=lambda i, r: seen.append(i))
    assert CountingEMT.calls == 2 and sorted(seen) == [1, 4]
    assert again.energies[3] == -1.0  # taken as given
    np.testing.assert_array_equal(again.energies[[0, 1, 4]], first.energies[[0, 1, 4]])


def test_failures_are_masked_with_their_reason(batch):
    system, x, valid = batch
    with pytest.warns(RuntimeWarning, match="4 of 4 structures failed"):
        out = AseEvaluator(BrokenEMT(), n_workers=1)(system, x, valid)
    assert not out.valid.any()
    assert all("SCF did not converge" in out.reasons[i] for i in (0, 1, 3, 4))
    with pytest.raises(ValueError, match="shape"):
        AseEvaluator(EMT(), n_workers=1)(system, x[:, :0], valid)
