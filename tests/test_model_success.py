"""Success tests against the run's own model: with EMT as "another model", they must find
EMT's own minimum and sites, and judge candidates as the EMT tests do."""

import jax
import numpy as np
import pytest

from godiff_jax import pt111_heptamer, stepped_pt_adatom
from godiff_jax.analysis import (
    ADATOM_EMT_MINIMUM,
    HEPTAMER_EMT_MINIMUM,
    heptamer_island,
    stepped_pt_adatom_minimum_sites,
    success_fn,
)
from godiff_jax.model_success import jax_relaxer, model_minimum, model_success_fn
from godiff_jax.potentials.emt import emt_energy_fn


def test_the_model_minimum_of_the_heptamer_is_emts_with_emt():
    system = pt111_heptamer()
    ref = model_minimum("heptamer", system, jax_relaxer(emt_energy_fn(system)))
    assert ref.converged
    assert ref.energy == pytest.approx(HEPTAMER_EMT_MINIMUM, abs=2e-4)


def test_the_adatom_sites_and_minimum_are_emts_with_emt():
    system = stepped_pt_adatom()
    ref = model_minimum("adatom", system, jax_relaxer(emt_energy_fn(system)))
    assert ref.energy == pytest.approx(ADATOM_EMT_MINIMUM, abs=2e-4)
    np.testing.assert_allclose(ref.positions[:, 0], stepped_pt_adatom_minimum_sites(), atol=0.01)


def test_candidates_are_judged_as_the_emt_tests_judge_them():
    system = pt111_heptamer()
    energy = emt_energy_fn(system)
    island = heptamer_island(system, "hcp")
    rng = np.random.default_rng(0)
    xs = np.stack(
        [
            island + rng.normal(0, 0.05, island.shape),  # the island, rattled: success
            island + np.array([0, 0, 1.0]) * (np.arange(7)[:, None] == 0),  # an atom lifted
            island,  # the island itself, but masked invalid (e.g. too close): no success
            island * np.array([1.3, 1.3, 1.0]),  # spread apart: not the wheel graph
        ]
    )
    e = np.asarray(jax.vmap(energy)(xs))
    valid = np.array([True, True, False, True])
    ours = model_success_fn("heptamer", system, jax_relaxer(energy))(xs, e, valid)
    np.testing.assert_array_equal(ours, success_fn("heptamer", system)(xs, e, valid))
    assert ours.tolist() == [True, True, False, False]


def test_without_a_model_the_structure_alone_decides():
    from godiff_jax.model_success import structure_success_fn

    system = stepped_pt_adatom()
    sites = stepped_pt_adatom_minimum_sites()
    xs = np.stack([sites[:1], sites[:1] + [0.2, 0.0, 0.0], sites[:1] + [0.0, 0.5, 0.0]])
    e = np.array([99.0, 99.0, ADATOM_EMT_MINIMUM])  # energies play no part
    ok = structure_success_fn("adatom", system)(xs, e, np.array([True, True, True]))
    assert ok.tolist() == [True, True, False]
    hept = pt111_heptamer()
    island = heptamer_island(hept, "hcp")
    xs = np.stack([island + 0.3, island * np.array([1.3, 1.3, 1.0])])  # shifted; spread apart
    ok = structure_success_fn("heptamer", hept)(xs, np.zeros(2), np.array([True, True]))
    assert ok.tolist() == [True, False]
