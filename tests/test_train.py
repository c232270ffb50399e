import jax
import jax.numpy as jnp
import numpy as np
import optax

from godiff_jax import pt111_heptamer
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
