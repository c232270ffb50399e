"""Optax training of the score model on the weighted buffer, many steps as one lax.scan."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from godiff_jax.loss import ScoreConvention, ScoreFn, weighted_dsm_loss
from godiff_jax.sde import VESDE


class TrainState(NamedTuple):
    params: object  # score-model parameters (plain pytree)
    opt_state: optax.OptState  # kept across GO-Diff iterations
    step: jax.Array  # [] int32, optimizer steps taken so far


def make_optimizer(
    learning_rate: float = 1e-4,
    weight_decay: float = 0.01,
    clip_norm: float = 10.0,
    plateau_factor: float = 0.95,
    plateau_patience: int = 100,
    steps_per_epoch: int = 4,
) -> optax.GradientTransformationExtraArgs:
    """Clip 10 -> AdamW(1e-4, wd 0.01) -> reduce-on-plateau(0.95, patience 100 epochs).

    The reference steps PyTorch's ReduceLROnPlateau once per epoch, so the plateau logic
    here averages the minibatch losses of one epoch (accumulation_size) before each check.
    """
    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(learning_rate, weight_decay=weight_decay),
        optax.contrib.reduce_on_plateau(
            factor=plateau_factor,
            patience=plateau_patience,
            accumulation_size=max(1, steps_per_epoch),
        ),
    )


def init_train_state(params: object, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def reset_plateau(state: TrainState, optimizer: optax.GradientTransformation) -> TrainState:
    """Restart reduce-on-plateau (scale 1, no best loss yet), keeping the AdamW moments.

    The reference calls Lightning's `fit` once per GO-Diff iteration, which builds a new
    scheduler each time; the DSM loss is noisy enough that a plateau counter carried over
    20 iterations would shrink the learning rate by orders of magnitude.
    """
    fresh = optimizer.init(state.params)

    def pick(old, new):
        return new if isinstance(old, optax.contrib.ReduceLROnPlateauState) else old

    is_plateau = lambda x: isinstance(x, optax.contrib.ReduceLROnPlateauState)  # noqa: E731
    opt_state = jax.tree_util.tree_map(pick, state.opt_state, fresh, is_leaf=is_plateau)
    return state._replace(opt_state=opt_state)


def reset_optimizer(state: TrainState, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh optimizer state (AdamW moments, bias correction and plateau), as Lightning's
    `fit` builds a new optimizer and scheduler at every GO-Diff iteration of the reference."""
    return state._replace(opt_state=optimizer.init(state.params))


def learning_rate_scale(state: TrainState) -> jax.Array:
    """Current reduce-on-plateau multiplier of the learning rate."""
    for s in jax.tree_util.tree_leaves(
        state.opt_state, is_leaf=lambda x: isinstance(x, optax.contrib.ReduceLROnPlateauState)
    ):
        if isinstance(s, optax.contrib.ReduceLROnPlateauState):
            return s.scale
    return jnp.ones(())


class StepStats(NamedTuple):
    """Per optimizer step of `train_steps`, each [n_steps]."""

    loss: jax.Array  # training minibatch loss
    grad_norm: jax.Array  # global gradient norm before clipping
    skipped: jax.Array  # bool: non-finite loss or gradient, update not applied
    val_loss: jax.Array  # held-out loss driving the plateau scheduler (NaN: no holdout)


def train_steps(
    score_fn: ScoreFn,
    optimizer: optax.GradientTransformationExtraArgs,
    state: TrainState,
    key: jax.Array,
    positions: jax.Array,
    weights: jax.Array,
    n_steps: int,
    batch_size: int,
    sde: VESDE = VESDE(),
    convention: ScoreConvention = "reference",
    bounds: tuple[jax.Array, jax.Array] | None = None,
    node_fraction: float = 1.0,
    n_holdout: int = 0,
) -> tuple[TrainState, StepStats]:
    """n_steps optimizer steps on the buffer (positions [K, M, 3], weights [K]).

    Minibatches walk through a fresh permutation of the training structures every epoch,
    as a data loader with shuffling does. `bounds` truncates the training noise to the box
    (see `sde.perturb`); `node_fraction` scales the loss (see `weighted_dsm_loss`).
    `n_holdout` > 0 holds that many randomly chosen buffer structures out of training, as
    the reference's 90/10 split does, and their loss (fresh noise every step) drives the
    plateau scheduler instead of the training loss. A step whose loss, held-out loss or
    gradient is not finite leaves parameters and optimizer state unchanged and is flagged
    in the returned StepStats.
    """
    k = positions.shape[0]
    key_perm, key_loss = jax.random.split(key)
    key_split = jax.random.fold_in(key, 1)
    if not 0 <= n_holdout < k:
        raise ValueError(f"n_holdout must be in [0, {k}), got {n_holdout}")
    if n_holdout:
        order = jax.random.permutation(key_split, k)
        val_x, val_w = positions[order[:n_holdout]], weights[order[:n_holdout]]
        positions, weights = positions[order[n_holdout:]], weights[order[n_holdout:]]
        k -= n_holdout
    batch_size = min(batch_size, k)
    steps_per_epoch = max(1, k // batch_size)

    def loss_fn(p, kk, x, w):
        return weighted_dsm_loss(
            score_fn, p, kk, x, w, sde, convention, bounds=bounds, node_fraction=node_fraction
        )

    loss_and_grad = jax.value_and_grad(loss_fn)

    def one_step(state: TrainState, i: jax.Array):
        step = state.step
        perm = jax.random.permutation(jax.random.fold_in(key_perm, step // steps_per_epoch), k)
        start = (step % steps_per_epoch) * batch_size
        idx = jax.lax.dynamic_slice_in_dim(perm, start, batch_size)
        key_step = jax.random.fold_in(key_loss, step)
        loss, grads = loss_and_grad(state.params, key_step, positions[idx], weights[idx])
        if n_holdout:
            val = loss_fn(state.params, jax.random.fold_in(key_step, 1), val_x, val_w)
        else:
            val = jnp.full((), jnp.nan, loss.dtype)
        gnorm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(gnorm) & (jnp.isfinite(val) | (n_holdout == 0))
        grads = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0.0), grads)
        value = jnp.where(finite, val if n_holdout else loss, 0.0)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, value=value)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
            lambda a, b: jnp.where(finite, a, b), new, old
        )
        new = TrainState(keep(params, state.params), keep(opt_state, state.opt_state), step + 1)
        return new, StepStats(loss, gnorm, ~finite, val)

    return jax.lax.scan(one_step, state, jnp.arange(n_steps))
