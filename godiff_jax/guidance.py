"""Force-field guidance (FFG, paper eq. 7): a force head on the score model's shared
representation, its training on every evaluated structure, and the L-BFGS corrector that
follows each reverse-SDE step.

The force head is a second gated equivariant head (the score head's shape, without the
time features) on the final PaiNN features of the mobile atoms. It predicts forces
directly, as the reference's `Forces` regressor head does, so its loss is the mean squared
force error; the energies are not a target. Its training updates the shared
representation too (the reference's score and force models share one PaiNN), with its own
optimizer, built fresh each iteration as the reference's per-iteration `fit` builds one.

The corrector, after the predictor step at time t: d = -H g with g = -F_theta(x) and H the
L-BFGS inverse Hessian of this structure (two-loop recursion over the last `memory`
curvature pairs, Barzilai–Borwein scaling of the initial H0), then
dx = a (1 - t)^zeta d, each atom's step clipped to `max_step` Å. The curvature pairs are
collected along the sampling path itself (s = x_k - x_{k-1} by minimum image, y = g_k -
g_{k-1}), so a pair the predictor's noise has made non-convex (s.y <= 0) is skipped, where
optax's `scale_by_lbfgs` would store it and turn the direction uphill; that, and the
per-structure state under vmap, is why the recursion is written here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from godiff_jax.buffer import Archive
from godiff_jax.geometry import clip_per_atom, minimum_image, periodic_axes
from godiff_jax.model import ScoreModel
from godiff_jax.model.layers import GatedEquivariantHead
from godiff_jax.sampler import Corrector
from godiff_jax.system import System
from godiff_jax.train import TrainState, guarded_update

# forces(x [B, M, 3] Å) -> [B, M, 3] eV/Å, parameters closed over by the caller
BoundForceFn = Callable[[jax.Array], jax.Array]
SCORE_HEAD = "score_head"


class ForceHead:
    """The force head's parameters and its forward pass on (s [B, M, F], v [B, M, 3, F])."""

    def __init__(self, features: int):
        self.features = features
        self.net = GatedEquivariantHead(3)

    def init(self, key: jax.Array):
        s = jnp.zeros((1, 1, self.features), jnp.float32)
        v = jnp.zeros((1, 1, 3, self.features), jnp.float32)
        return self.net.init(key, s, v)["params"]

    def apply(self, head_params, s: jax.Array, v: jax.Array) -> jax.Array:
        return self.net.apply({"params": head_params}, s, v)


def predicted_forces(
    model: ScoreModel, head: ForceHead, params, head_params, ctx=None
) -> BoundForceFn:
    """x [B, M, 3] -> forces [B, M, 3] eV/Å from the representation of `params` (`ctx`:
    its template pass, if already computed)."""
    ctx = model.context(params) if ctx is None else ctx

    def forces(x):
        return head.apply(head_params, *model.representation(params, ctx, x))

    return forces


class ForceStats(NamedTuple):
    loss: jax.Array  # [n_steps] mean squared force error of each minibatch, (eV/Å)^2
    skipped: jax.Array  # [n_steps] bool: non-finite loss or gradient, or nothing to train on


def capped_forces(forces: jax.Array, cap: float | None) -> jax.Array:
    """Per-atom force vectors scaled down to norm `cap` where longer (None: unchanged).

    Near-overlapping samples carry forces of hundreds of eV/Å that would dominate a mean
    squared error; the corrector only needs the direction and rough size of the rest.
    """
    if cap is None:
        return forces
    norm = jnp.linalg.norm(forces, axis=-1, keepdims=True)
    return forces * jnp.minimum(1.0, cap / jnp.maximum(norm, 1e-12))


def train_force_head(
    model: ScoreModel,
    head: ForceHead,
    optimizer: optax.GradientTransformationExtraArgs,
    params,
    head_params,
    key: jax.Array,
    archive: Archive,
    n_steps: int,
    batch_size: int,
    force_cap: float | None = 10.0,
) -> tuple[object, object, ForceStats]:
    """`n_steps` steps on the forces of every valid archive entry (unweighted).

    Minibatches are drawn uniformly with replacement from the valid entries. The
    representation (every score-model parameter but the score head) and the head are
    trained; the score head is left as it is. Returns (params, head_params, stats).
    """
    score_head = params[SCORE_HEAD]
    backbone = {k: v for k, v in params.items() if k != SCORE_HEAD}
    valid = archive.valid
    n_valid = jnp.sum(valid)
    key_order, key_steps = jax.random.split(key)
    # Valid entries first, in random order; a minibatch picks among the first n_valid.
    order = jnp.argsort(jnp.where(valid, jax.random.uniform(key_order, valid.shape), 2.0))
    targets = capped_forces(archive.forces, force_cap)

    def loss_fn(trained, x, f):
        bb, hp = trained
        p = {**bb, SCORE_HEAD: score_head}
        pred = head.apply(hp, *model.representation(p, model.context(p), x))
        return jnp.mean((pred - f) ** 2)

    loss_and_grad = jax.value_and_grad(loss_fn)

    def step(state: TrainState, i):
        pick = jax.random.randint(
            jax.random.fold_in(key_steps, i), (batch_size,), 0, jnp.maximum(n_valid, 1)
        )
        idx = order[pick]
        loss, grads = loss_and_grad(state.params, archive.positions[idx], targets[idx])
        state, _, applied = guarded_update(optimizer, state, grads, loss, n_valid > 0)
        return state, ForceStats(loss, ~applied)

    trained = (backbone, head_params)
    start = TrainState(trained, optimizer.init(trained), jnp.zeros((), jnp.int32))
    state, stats = jax.lax.scan(step, start, jnp.arange(n_steps))
    bb, hp = state.params
    return {**bb, SCORE_HEAD: score_head}, hp, stats


# ---------------------------------------------------------------- L-BFGS


class LBFGSMemory(NamedTuple):
    """Per structure (leading axis B): the last `memory` curvature pairs, a ring buffer."""

    s: jax.Array  # [B, m, D] position differences
    y: jax.Array  # [B, m, D] gradient differences
    rho: jax.Array  # [B, m] 1 / s.y, 0 for an empty slot
    newest: jax.Array  # [B] int32 slot of the newest pair (-1: none yet)
    x: jax.Array  # [B, D] where the last gradient was taken
    g: jax.Array  # [B, D] that gradient
    started: jax.Array  # [B] bool: x, g hold a previous point


def init_memory(x: jax.Array, memory: int) -> LBFGSMemory:
    b, d = x.shape[0], x.shape[1] * x.shape[2]
    z = jnp.zeros((b, memory, d), x.dtype)
    return LBFGSMemory(
        z,
        z,
        jnp.zeros((b, memory), x.dtype),
        jnp.full((b,), -1, jnp.int32),
        jnp.zeros((b, d), x.dtype),
        jnp.zeros((b, d), x.dtype),
        jnp.zeros((b,), bool),
    )


def two_loop(g, s, y, rho, newest, h0):
    """-H g for one structure: g [D], pairs s, y [m, D], rho [m] (0: empty), newest slot,
    h0 the initial inverse curvature (scalar). Nocedal & Wright algorithm 7.4."""
    m = s.shape[0]
    order = (newest - jnp.arange(m)) % m  # newest first
    q = g
    alphas = []
    for k in range(m):
        i = order[k]
        a = rho[i] * jnp.dot(s[i], q)
        q = q - a * y[i]
        alphas.append(a)
    r = h0 * q
    for k in reversed(range(m)):
        i = order[k]
        beta = rho[i] * jnp.dot(y[i], r)
        r = r + s[i] * (alphas[k] - beta)
    return -r


def lbfgs_step(mem: LBFGSMemory, x: jax.Array, g: jax.Array, h0_default: float, diff_fn):
    """Add the pair (x - mem.x, g - mem.g) where its curvature is positive, then the
    direction -H g. x, g [B, D]; diff_fn maps raw position differences to minimum-image
    ones. Returns (direction [B, D], memory)."""
    m = mem.s.shape[1]
    s_new = diff_fn(x - mem.x)
    y_new = g - mem.g
    sy = jnp.sum(s_new * y_new, axis=-1)
    accept = mem.started & (sy > 1e-10) & jnp.all(jnp.isfinite(s_new) & jnp.isfinite(y_new), -1)
    slot = jnp.where(accept, (mem.newest + 1) % m, mem.newest)
    put = accept[:, None] & (jnp.arange(m) == slot[:, None])  # [B, m]
    s = jnp.where(put[..., None], s_new[:, None, :], mem.s)
    y = jnp.where(put[..., None], y_new[:, None, :], mem.y)
    rho = jnp.where(put, 1.0 / jnp.where(accept, sy, 1.0)[:, None], mem.rho)
    newest = slot
    has_pair = newest >= 0
    at = jnp.maximum(newest, 0)
    s_last = jnp.take_along_axis(s, at[:, None, None], 1)[:, 0]
    y_last = jnp.take_along_axis(y, at[:, None, None], 1)[:, 0]
    bb = jnp.sum(s_last * y_last, -1) / jnp.maximum(jnp.sum(y_last * y_last, -1), 1e-30)
    h0 = jnp.where(has_pair, bb, h0_default)
    d = jax.vmap(two_loop)(g, s, y, rho, newest, h0)
    return d, LBFGSMemory(s, y, rho, newest, x, g, jnp.ones_like(mem.started))


def force_corrector(
    forces_fn: BoundForceFn,
    system: System,
    *,
    scale: float = 0.2,
    per_dt: bool = True,
    zeta: float = 3.0,
    memory: int = 10,
    max_step: float = 0.1,
    h0: float = 1.0 / 70.0,
    on: jax.Array | bool = True,
) -> Corrector:
    """The FFG corrector for `reverse_sample`: dx = a (1 - t)^zeta d after each predictor
    step, a = scale * dt (per_dt) or scale, d the L-BFGS direction from the predicted
    forces (memory per structure, carried through the scan), each atom's step clipped to
    max_step Å. `on` False (e.g. a traced `iteration > 0`) leaves x unchanged."""
    cell = np.asarray(system.cell, float)
    periodic = periodic_axes(system)

    def diff_fn(d):
        shape = d.shape
        return minimum_image(d.reshape(*shape[:-1], -1, 3), cell, periodic).reshape(shape)

    def init(x):
        return init_memory(x, memory)

    def update(x, t, dt, mem):
        b = x.shape[0]
        g = -forces_fn(x).astype(x.dtype).reshape(b, -1)
        d, mem = lbfgs_step(mem, x.reshape(b, -1), g, h0, diff_fn)
        a = scale * dt if per_dt else scale
        dx = clip_per_atom((a * (1.0 - t) ** zeta * d).reshape(x.shape), max_step)
        apply = on & jnp.all(jnp.isfinite(dx), axis=(-2, -1), keepdims=True)
        return jnp.where(apply, x + dx, x), mem

    return Corrector(init, update)
