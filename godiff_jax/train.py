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
    taken: jax.Array  # bool: the step ran (False after a `StopRule` ended training)
    consensus: jax.Array  # cosine(gradient, Adam's first moment); NaN when not tracked


class StopRule(NamedTuple):
    """Momentum-consensus stop (go-diff 1.1.0): after `warmup` steps, track the cosine
    between each step's gradient and Adam's first moment before the step; stop once it
    has stayed below `fraction` of its peak for `patience` consecutive steps."""

    warmup: int = 50
    patience: int = 100
    fraction: float = 0.5


class StopState(NamedTuple):
    peak: jax.Array  # [] highest consensus seen after the warm-up (-inf before)
    below: jax.Array  # [] int32, consecutive steps below fraction * peak
    done: jax.Array  # [] bool


def init_stop() -> StopState:
    return StopState(jnp.full((), -jnp.inf), jnp.zeros((), jnp.int32), jnp.zeros((), bool))


def update_stop(rule: StopRule, st: StopState, i: jax.Array, cos: jax.Array) -> StopState:
    """The stop rule after step i (counted from 0 within this call) with consensus `cos`."""
    tracked = (i >= rule.warmup) & jnp.isfinite(cos) & ~st.done  # frozen once done
    peak = jnp.where(tracked, jnp.maximum(st.peak, cos), st.peak)
    low = tracked & (cos < rule.fraction * peak)
    below = jnp.where(low, st.below + 1, jnp.where(tracked, 0, st.below))
    return StopState(peak, below, st.done | (below >= rule.patience))


def _first_moment(opt_state) -> object | None:
    for s in jax.tree_util.tree_leaves(
        opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)
    ):
        if isinstance(s, optax.ScaleByAdamState):
            return s.mu
    return None


def _cosine(a, b) -> jax.Array:
    dot = sum(
        jnp.vdot(x, y)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )
    na, nb = optax.tree.norm(a), optax.tree.norm(b)
    return jnp.where((na > 0) & (nb > 0), dot / jnp.maximum(na * nb, 1e-30), jnp.nan)


def train_steps(
    score_fn: ScoreFn,
    optimizer: optax.GradientTransformationExtraArgs,
    state: TrainState,
    key: jax.Array,
    positions: jax.Array,
    weights: jax.Array,
    n_steps: int,
    batch_size: int,
    *,
    sde: VESDE = VESDE(),
    convention: ScoreConvention = "reference",
    bounds: tuple[jax.Array, jax.Array] | None = None,
    node_fraction: float = 1.0,
    n_holdout: int = 0,
    stop: StopRule | None = None,
    n_used: jax.Array | None = None,
) -> tuple[TrainState, StepStats]:
    """n_steps optimizer steps on the buffer (positions [K, M, 3], weights [K]).

    Minibatches walk through a fresh permutation of the training structures every epoch,
    as a data loader with shuffling does. `bounds` truncates the training noise to the box
    (see `sde.perturb`); `node_fraction` scales the loss (see `weighted_dsm_loss`).
    `n_holdout` > 0 holds that many randomly chosen buffer structures out of training, as
    the reference's 90/10 split does, and their loss (fresh noise every step) drives the
    plateau scheduler instead of the training loss. A step whose loss, held-out loss or
    gradient is not finite leaves parameters and optimizer state unchanged and is flagged
    in the returned StepStats. With a `stop` rule, n_steps is a cap: a `lax.while_loop`
    ends when the rule says so (under a seed vmap, a stopped seed's state stays as it was
    while others go on), and the steps not run have taken=False. `n_used` (traced) trains
    on the first n_used structures only, epochs over them (a buffer whose size changes
    inside a fixed shape; the rest is padding).
    """
    k = positions.shape[0]
    key_perm, key_loss = jax.random.split(key)
    if not 0 <= n_holdout < k:
        raise ValueError(f"n_holdout must be in [0, {k}), got {n_holdout}")
    if n_holdout and n_used is not None:
        raise ValueError("n_holdout and n_used do not combine")
    held_out = None
    if n_holdout:
        order = jax.random.permutation(jax.random.fold_in(key, 1), k)
        held_out = (positions[order[:n_holdout]], weights[order[:n_holdout]])
        positions, weights = positions[order[n_holdout:]], weights[order[n_holdout:]]

    def loss_fn(p, kk, x, w):
        return weighted_dsm_loss(
            score_fn,
            p,
            kk,
            x,
            w,
            sde=sde,
            convention=convention,
            bounds=bounds,
            node_fraction=node_fraction,
        )

    one_step = _step_fn(
        optimizer,
        loss_fn,
        (key_perm, key_loss),
        (positions, weights),
        batch_size,
        held_out,
        stop is not None,
        n_used,
    )
    if stop is None:
        return jax.lax.scan(one_step, state, jnp.arange(n_steps))
    return _steps_until_stop(one_step, state, n_steps, stop)


def guarded_update(
    optimizer: optax.GradientTransformationExtraArgs,
    state: TrainState,
    grads: object,
    value: jax.Array,
    ok: jax.Array | bool = True,
) -> tuple[TrainState, jax.Array, jax.Array]:
    """One optimizer step, skipped (parameters and optimizer state unchanged) when `value`
    (the loss the plateau scheduler sees) or the gradient is not finite, or `ok` is False.
    Returns (state, gradient norm, whether the step was applied)."""
    gnorm = optax.tree.norm(grads)
    finite = jnp.isfinite(value) & jnp.isfinite(gnorm) & ok
    grads = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0.0), grads)
    value = jnp.where(finite, value, 0.0)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params, value=value)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
        lambda a, b: jnp.where(finite, a, b), new, old
    )
    new = TrainState(keep(params, state.params), keep(opt_state, state.opt_state), state.step + 1)
    return new, gnorm, finite


def _step_fn(optimizer, loss_fn, keys, data, batch_size, held_out, track_consensus, n_used=None):
    """One optimizer step (state, i) -> (state, StepStats) on minibatches of `data` (its
    first `n_used` entries when given)."""
    key_perm, key_loss = keys
    positions, weights = data
    k = positions.shape[0]
    batch_size = min(batch_size, k)
    if n_used is None:
        steps_per_epoch = max(1, k // batch_size)
    else:
        steps_per_epoch = jnp.maximum(1, n_used // batch_size)
    loss_and_grad = jax.value_and_grad(loss_fn)

    def permutation(key):
        if n_used is None:
            return jax.random.permutation(key, k)
        # A random order of the first n_used entries, then the padding.
        u = jnp.where(jnp.arange(k) < n_used, jax.random.uniform(key, (k,)), 2.0)
        return jnp.argsort(u)

    def one_step(state: TrainState, i: jax.Array):
        step = state.step
        perm = permutation(jax.random.fold_in(key_perm, step // steps_per_epoch))
        start = (step % steps_per_epoch) * batch_size
        idx = jax.lax.dynamic_slice_in_dim(perm, start, batch_size)
        key_step = jax.random.fold_in(key_loss, step)
        loss, grads = loss_and_grad(state.params, key_step, positions[idx], weights[idx])
        if held_out is not None:
            val = loss_fn(state.params, jax.random.fold_in(key_step, 1), *held_out)
        else:
            val = jnp.full((), jnp.nan, loss.dtype)
        value = loss if held_out is None else val
        new, gnorm, finite = guarded_update(optimizer, state, grads, value, jnp.isfinite(loss))
        if not track_consensus:
            cos = jnp.full((), jnp.nan, loss.dtype)
        else:
            mu = _first_moment(state.opt_state)
            cos = jnp.where(finite, _cosine(grads, mu), jnp.nan) if mu is not None else jnp.nan
        return new, StepStats(loss, gnorm, ~finite, val, jnp.ones((), bool), cos)

    return one_step


def _steps_until_stop(one_step, state: TrainState, n_steps: int, stop: StopRule):
    """`one_step` in a while loop until the stop rule fires or n_steps are done."""
    blank = jax.eval_shape(one_step, state, 0)[1]
    stats0 = jax.tree_util.tree_map(
        lambda a: jnp.full((n_steps, *a.shape), jnp.nan if a.dtype != bool else False, a.dtype),
        blank,
    )

    def cond(carry):
        _, i, _, st = carry
        return (i < n_steps) & ~st.done

    def body(carry):
        state, i, stats, st = carry
        state, row = one_step(state, i)
        stats = jax.tree_util.tree_map(lambda buf, v: buf.at[i].set(v), stats, row)
        return state, i + 1, stats, update_stop(stop, st, i, row.consensus)

    state, _, stats, _ = jax.lax.while_loop(
        cond, body, (state, jnp.zeros((), jnp.int32), stats0, init_stop())
    )
    return state, stats
