import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from godiff_jax import pt111_heptamer, stepped_pt_adatom
from godiff_jax.loss import dsm_error
from godiff_jax.model import ScoreModel, ScoreModelConfig
from godiff_jax.sde import VESDE, marginal_var, sample_prior
from godiff_jax.train import (
    init_train_state,
    learning_rate_scale,
    make_optimizer,
    reset_plateau,
    train_steps,
)


def test_one_training_step_paper_model_has_no_nan():
    system = pt111_heptamer()
    model = ScoreModel(system, ScoreModelConfig())  # paper size: 64 features, 4 blocks
    params = model.init(jax.random.PRNGKey(0))
    opt = make_optimizer()
    state = init_train_state(params, opt)
    buffer = sample_prior(jax.random.PRNGKey(1), system, 16)
    weights = jnp.linspace(0.0, 2.0, 16)  # includes a zero weight
    new, stats = jax.jit(lambda s, k: train_steps(model, opt, s, k, buffer, weights, 1, 16))(
        state, jax.random.PRNGKey(2)
    )
    losses = stats.loss
    assert not bool(stats.skipped[0]) and np.isfinite(float(stats.grad_norm[0]))
    assert losses.shape == (1,) and np.isfinite(float(losses[0])) and float(losses[0]) > 0
    assert int(new.step) == 1
    changed = 0
    for a, b in zip(
        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(new.params), strict=True
    ):
        assert np.all(np.isfinite(np.asarray(b)))
        changed += int(not np.array_equal(np.asarray(a), np.asarray(b)))
    assert changed > 0


def test_training_reduces_loss_on_a_fixed_structure():
    """A tiny model fitted to one structure: its DSM error at t = 0.7 (many noise draws)
    must drop below the untrained model's."""
    system = pt111_heptamer()
    model = ScoreModel(system, ScoreModelConfig(features=16, n_blocks=1, n_rbf=8))
    opt = make_optimizer(learning_rate=3e-3, steps_per_epoch=1)
    params = model.init(jax.random.PRNGKey(0))
    x0 = jnp.repeat(sample_prior(jax.random.PRNGKey(1), system, 1), 8, axis=0)
    state, _ = jax.jit(lambda s, k: train_steps(model, opt, s, k, x0, jnp.ones(8), 300, 8))(
        init_train_state(params, opt), jax.random.PRNGKey(3)
    )

    def error_at(p, t=0.7, n=256):
        var = marginal_var(VESDE(), t)
        z = jax.random.normal(jax.random.PRNGKey(4), (n, *x0.shape[1:]))
        s = model(p, x0[:1] + jnp.sqrt(var) * z, jnp.full((n,), t))
        return float(jnp.mean(dsm_error(z, s, jnp.full((n,), var))))

    assert error_at(state.params) < 0.9 * error_at(params)  # measured: 0.86


def test_plateau_reset_keeps_adam_moments():
    opt = make_optimizer(plateau_patience=1, steps_per_epoch=1)
    params = {"w": jnp.ones(3)}
    state = init_train_state(params, opt)
    opt_state = state.opt_state
    for _ in range(5):  # a constant loss never improves: the scale drops
        _, opt_state = opt.update({"w": jnp.ones(3)}, opt_state, params, value=jnp.asarray(1.0))
    state = state._replace(opt_state=opt_state)
    assert float(learning_rate_scale(state)) < 0.9
    reset = reset_plateau(state, opt)
    assert float(learning_rate_scale(reset)) == 1.0
    adam_old = [s for s in jax.tree_util.tree_leaves(state.opt_state[1])]
    adam_new = [s for s in jax.tree_util.tree_leaves(reset.opt_state[1])]
    for a, b in zip(adam_old, adam_new, strict=True):
        np.testing.assert_array_equal(a, b)
    assert isinstance(reset.opt_state[2], optax.contrib.ReduceLROnPlateauState)


def _tiny(system):
    model = ScoreModel(system, ScoreModelConfig(features=8, n_blocks=1, n_rbf=6, cutoff=5.0))
    opt = make_optimizer(steps_per_epoch=2)
    return model, opt, init_train_state(model.init(jax.random.PRNGKey(0)), opt)


def test_non_finite_step_leaves_parameters_and_optimizer_unchanged():
    system = stepped_pt_adatom()
    model, opt, state = _tiny(system)
    x = sample_prior(jax.random.PRNGKey(1), system, 4)
    w = jnp.array([1.0, jnp.inf, 1.0, 1.0])  # one epoch of 2 batches: one holds the inf

    def steps(s, n):
        return train_steps(model, opt, s, jax.random.PRNGKey(2), x, w, n, 2)

    def leaves(s):
        return [np.asarray(v) for v in jax.tree_util.tree_leaves((s.params, s.opt_state))]

    new, stats = jax.jit(lambda s: steps(s, 2))(state)
    skipped = np.asarray(stats.skipped)
    assert skipped.tolist() in ([True, False], [False, True])
    assert not np.isfinite(np.asarray(stats.loss)[skipped][0])
    # Step by step: the skipped step changes nothing but the step counter.
    one = jax.jit(lambda s: steps(s, 1))
    s1, _ = one(state)
    s2, _ = one(s1)
    skipped_state, other = (state, s1) if skipped[0] else (s1, s2)
    for a, b in zip(leaves(skipped_state), leaves(other), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(leaves(s2), leaves(new), strict=True):
        np.testing.assert_array_equal(a, b)
    params = jax.tree_util.tree_leaves(new.params)
    assert int(new.step) == 2 and all(np.all(np.isfinite(np.asarray(v))) for v in params)


def test_loss_normalisations_differ_by_the_node_count_factor():
    """all_atoms averages over all 21 atoms with the template's 20 terms zero: exactly
    1 / 21 of the mobile-atom mean, on the same draws."""
    from godiff_jax.loss import weighted_dsm_loss

    system = stepped_pt_adatom()
    model, _, state = _tiny(system)
    x = sample_prior(jax.random.PRNGKey(1), system, 4)
    w = jnp.array([0.5, 1.0, 2.0, 0.5])
    key = jax.random.PRNGKey(3)
    mobile = weighted_dsm_loss(model, state.params, key, x, w)
    frac = system.n_mobile / system.n_atoms
    every = weighted_dsm_loss(model, state.params, key, x, w, node_fraction=frac)
    assert system.n_atoms == 21 and system.n_mobile == 1
    np.testing.assert_allclose(float(every), float(mobile) / 21, rtol=1e-6)
    # By hand: pad the per-atom errors with zeros for the template and average over 21.
    from godiff_jax.sde import perturb

    k_t, k_z = jax.random.split(key)
    t = jax.random.uniform(k_t, (4,), minval=1e-5, maxval=1.0)
    xt, z = jax.vmap(perturb, (0, None, 0, 0))(jax.random.split(k_z, 4), VESDE(), x, t)
    var = marginal_var(VESDE(), t)[:, None, None]
    per_atom = jnp.sum((z + var * model(state.params, xt, t)) ** 2, -1)  # [4, 1]
    padded = jnp.concatenate([jnp.zeros((4, 20)), per_atom], -1)
    np.testing.assert_allclose(float(every), float(jnp.mean(w * padded.mean(-1))), rtol=1e-5)


def test_holdout_split_sizes_and_plateau_value():
    """torch's random_split of 64 as 90/10 gives 58/6 and of 16 gives 15/1; the plateau
    scheduler is driven by the held-out loss, which is reported per step."""

    from godiff_jax.config import make_config

    c = make_config(holdout_fraction=0.1)
    assert (c.n_train, c.n_holdout, c.steps_per_epoch) == (58, 6, 3)
    c = c.replace(buffer_size=16, batch_size=8)
    assert (c.n_train, c.n_holdout, c.steps_per_epoch) == (15, 1, 1)
    system = stepped_pt_adatom()
    model, opt, state = _tiny(system)
    x = sample_prior(jax.random.PRNGKey(1), system, 8)
    _, stats = train_steps(
        model, opt, state, jax.random.PRNGKey(2), x, jnp.ones(8), 3, 2, n_holdout=2
    )
    assert np.all(np.isfinite(np.asarray(stats.val_loss)))
    _, stats = train_steps(model, opt, state, jax.random.PRNGKey(2), x, jnp.ones(8), 3, 2)
    assert np.all(np.isnan(np.asarray(stats.val_loss)))


def test_stop_rule_on_a_synthetic_consensus_sequence():
    """warmup 5, patience 3, fraction 0.5: the peak after the warm-up is 0.8 (step 5); 0.6
    is not below 0.4; 0.3, 0.35, 0.2 are: done after step 9. NaN and warm-up steps are
    not tracked (0.95 in the warm-up does not set the peak)."""
    from godiff_jax.train import StopRule, init_stop, update_stop

    rule = StopRule(warmup=5, patience=3, fraction=0.5)
    seq = [np.nan, 0.95, 0.9, 0.9, 0.9, 0.8, 0.6, 0.3, 0.35, 0.2, 0.9]
    st, done_at = init_stop(), None
    for i, c in enumerate(seq):
        st = update_stop(rule, st, jnp.asarray(i), jnp.asarray(c, jnp.float32))
        if bool(st.done) and done_at is None:
            done_at = i
    assert done_at == 9 and float(st.peak) == pytest.approx(0.8)
    # A recovery resets the count: 0.3, 0.3, 0.5 (>= 0.4), 0.3, 0.3 is not 3 in a row.
    st = init_stop()
    for i, c in enumerate([0.8, 0.3, 0.3, 0.5, 0.3, 0.3]):
        st = update_stop(StopRule(0, 3, 0.5), st, jnp.asarray(i), jnp.asarray(c, jnp.float32))
    assert not bool(st.done) and int(st.below) == 2


def test_training_with_a_stop_rule_ends_early_and_marks_the_rest():
    from godiff_jax.train import StopRule

    system = stepped_pt_adatom()
    model, opt, state = _tiny(system)
    x = sample_prior(jax.random.PRNGKey(1), system, 4)
    new, stats = jax.jit(
        lambda s: train_steps(
            model,
            opt,
            s,
            jax.random.PRNGKey(2),
            x,
            jnp.ones(4),
            60,
            2,
            stop=StopRule(warmup=2, patience=3),
        )
    )(state)
    taken = np.asarray(stats.taken)
    n = int(taken.sum())
    assert 5 <= n < 60 and taken[:n].all() and not taken[n:].any()
    assert int(new.step) == n and np.isnan(np.asarray(stats.loss)[n:]).all()
    cos = np.asarray(stats.consensus)[:n]
    assert np.all(np.abs(cos[1:]) <= 1 + 1e-5)  # step 0: Adam's moment is still zero


def test_adaptive_temperature_hand_computed():
    from godiff_jax.schedule import heat_capacity_kT as adaptive_temperature

    e = jnp.array([1.0, 2.0, 3.0, 4.0, 100.0])
    valid = jnp.array([True, True, True, True, False])  # the 100 eV entry is masked
    kT, heat = adaptive_temperature(e, valid, jnp.asarray(jnp.nan))
    assert float(kT) == pytest.approx(np.sqrt(1.25)) and np.isnan(float(heat))
    kT, heat = adaptive_temperature(e, valid, jnp.asarray(1.0))  # C = 1.25 > 1
    assert float(heat) == pytest.approx(1.25) and float(kT) == pytest.approx(0.95)
    kT, heat = adaptive_temperature(e, valid, jnp.asarray(2.0))  # C = 0.3125
    assert float(heat) == pytest.approx(0.3125) and float(kT) == pytest.approx(1.0)
    kT, _ = adaptive_temperature(e, valid.at[1:].set(False), jnp.asarray(2.0))
    assert float(kT) == 2.0  # one valid energy: no variance, kT kept


def test_temperature_controllers_fill_one_slot():
    from godiff_jax.schedule import adaptive_temperature, exponential_kT, fixed_temperature

    kTs = exponential_kT(5.0, 0.02, 4)
    fixed = fixed_temperature(kTs)
    e = jnp.array([1.0, 2.0, 3.0, 4.0])
    valid = jnp.ones(4, bool)
    state = fixed.init()
    for k in range(4):
        kT, state = fixed.update(state, jnp.asarray(k), e, valid)
        assert float(kT) == pytest.approx(kTs[k], rel=1e-6) and float(state) == float(kT)
    adaptive = adaptive_temperature(5.0)
    state = adaptive.init()
    assert np.isnan(float(state))
    kT, state = adaptive.update(state, 0, e, jnp.zeros(4, bool))  # nothing valid yet
    assert float(kT) == 5.0 and float(state) == 5.0
    kT, state = adaptive.update(jnp.asarray(jnp.nan), 0, e, valid)
    assert float(kT) == pytest.approx(np.sqrt(1.25))  # std of the first valid energies
    kT, _ = adaptive.update(jnp.asarray(1.0), 1, e, valid)  # C = 1.25 > 1: cool slowly
    assert float(kT) == pytest.approx(0.95)


def test_kT_schedule_cools_then_holds():
    from godiff_jax.config import SearchConfig
    from godiff_jax.schedule import exponential_kT

    # Cooling over 3 of 6 iterations: 5, sqrt(5 * 0.02) = 0.316..., 0.02, then held.
    np.testing.assert_allclose(
        exponential_kT(5.0, 0.02, 6, n_anneal=3), [5.0, np.sqrt(0.1), 0.02, 0.02, 0.02, 0.02]
    )
    np.testing.assert_array_equal(exponential_kT(5.0, 0.02, 4, 0), exponential_kT(5.0, 0.02, 4))
    config = SearchConfig(n_iterations=6).replace(kT_anneal_iterations=3)
    np.testing.assert_allclose(config.kT_schedule(), exponential_kT(5.0, 0.02, 6, 3))
    for bad in (7, 1, -1):  # one iteration cannot cool from kT_start to kT_end
        with pytest.raises(ValueError, match=r"must be 0 \(all\) or lie in 2..n_iterations"):
            SearchConfig(n_iterations=6).replace(kT_anneal_iterations=bad)
    with pytest.raises(ValueError, match="kT_anneal_iterations must be an integer"):
        SearchConfig(n_iterations=6).replace(kT_anneal_iterations=2.5)
    ess = dict(ess_target=16.0, n_samples=64, ess_first=32, max_evaluations=320)
    with pytest.raises(ValueError, match="kT_anneal_iterations shapes the fixed schedule"):
        SearchConfig(n_iterations=6).replace(kT_anneal_iterations=3, **ess)
    with pytest.raises(ValueError, match="kT_anneal_iterations shapes the fixed schedule"):
        SearchConfig(n_iterations=6).replace(kT_anneal_iterations=3, adaptive_kT=True)


def test_adaptive_temperature_iqr_spread_hand_computed():
    from godiff_jax.schedule import IQR_PER_STD, adaptive_temperature, heat_capacity_kT

    # Quartiles of [0, 1, 2, 3, 4] (linear interpolation): 1 and 3, IQR 2; the 1000 eV
    # outlier is masked in the first case; unmasked, the six values' quartiles (positions
    # 1.25 and 3.75) are 1.25 and 3.75.
    e = jnp.array([0.0, 1.0, 2.0, 3.0, 4.0, 1000.0])
    valid = jnp.array([True] * 5 + [False])
    sigma = 2.0 / IQR_PER_STD
    kT, heat = heat_capacity_kT(e, valid, jnp.asarray(jnp.nan), spread="iqr")
    assert float(kT) == pytest.approx(sigma, rel=1e-6) and np.isnan(float(heat))
    kT, heat = heat_capacity_kT(e, valid, jnp.asarray(1.0), spread="iqr")  # C = 2.198 > 1
    assert float(heat) == pytest.approx(sigma**2, rel=1e-6) and float(kT) == pytest.approx(0.95)
    kT, heat = heat_capacity_kT(e, valid, jnp.asarray(2.0), spread="iqr")  # C = 0.55 < 1
    assert float(heat) == pytest.approx(sigma**2 / 4, rel=1e-6) and float(kT) == 1.0
    kT, _ = heat_capacity_kT(e, jnp.ones(6, bool), jnp.asarray(jnp.nan), spread="iqr")
    assert float(kT) == pytest.approx(2.5 / IQR_PER_STD, rel=1e-6)  # std would be 372 eV
    kT, _ = heat_capacity_kT(e, valid.at[1:].set(False), jnp.asarray(2.0), spread="iqr")
    assert float(kT) == 2.0  # one valid energy: kT kept
    with pytest.raises(ValueError, match="spread"):
        adaptive_temperature(1.0, spread="mad")


def test_training_on_a_partly_filled_buffer_never_touches_the_padding():
    """n_used: epochs over the first entries only; padding holding an infinite weight
    would make any step that drew it non-finite (and skipped)."""
    system = stepped_pt_adatom()
    model, opt, state = _tiny(system)
    x = sample_prior(jax.random.PRNGKey(1), system, 7)
    w = jnp.array([1.0, 1.0, 1.0, 1.0, jnp.inf, jnp.inf, jnp.inf])
    run = jax.jit(
        lambda s, n: train_steps(model, opt, s, jax.random.PRNGKey(2), x, w, 12, 2, n_used=n)
    )
    _, stats = run(state, jnp.int32(4))
    assert not np.asarray(stats.skipped).any()
    assert np.all(np.isfinite(np.asarray(stats.loss)))
    _, stats = run(state, jnp.int32(7))  # the same program, the padding now in use
    assert np.asarray(stats.skipped).any()
