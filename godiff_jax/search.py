"""One GO-Diff iteration as pure functions of a RunState (the host loop is `runner.run`).

An iteration (DESIGN.md section 1): sample N structures from the reverse SDE (from the
prior, or with refinement a share from the lowest archived structures) -> mask pairs
closer than `min_distance` -> evaluate energies and forces -> add to the archive -> redraw
the buffer at kT_k -> train the score model. `GODiff` holds the three phases (sample,
evaluate, update) for one seed; `runner` vmaps them over seeds and puts an evaluator of
any kind (`godiff_jax.evaluate`) between them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from godiff_jax import ess
from godiff_jax.buffer import (
    Archive,
    add_to_archive,
    init_archive,
    polish_buffer,
    select_buffer,
    truncate_buffer,
    uniform_weights,
)
from godiff_jax.config import (  # noqa: F401 (re-exported: the config's old home)
    PRESETS,
    SearchConfig,
    apply_preset,
    make_config,
)
from godiff_jax.evaluate import EnergyFn, JaxEvaluator
from godiff_jax.geometry import min_distance
from godiff_jax.guidance import ForceHead, force_corrector, predicted_forces, train_force_head
from godiff_jax.model import ScoreModel
from godiff_jax.sampler import reverse_sample
from godiff_jax.schedule import (
    Temperature,
    adaptive_temperature,
    budget_temperature,
    fixed_temperature,
    heat_capacity_kT,
)
from godiff_jax.sde import marginal_var, noise_bounds, sample_prior
from godiff_jax.system import System
from godiff_jax.train import (
    StepStats,
    TrainState,
    init_train_state,
    learning_rate_scale,
    make_optimizer,
    reset_optimizer,
    reset_plateau,
)
from godiff_jax.train import train_steps as run_train_steps

# success_fn(positions [N, M, 3], energies [N], valid [N]) -> bool [N] (host side, numpy)
SuccessFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class RunState(NamedTuple):
    """Everything a run needs to continue; every leaf may carry a leading seed axis.
    (Wall-clock time is the host loop's: `runner.RunClock`, kept in the checkpoint's
    metadata.)"""

    key: jax.Array  # PRNG key, advanced once per iteration
    iteration: jax.Array  # [] int32, iterations completed
    train: TrainState
    archive: Archive
    n_evaluations: jax.Array  # [] int32, energy evaluations so far
    first_success: jax.Array  # [] int32, evaluation index of the first success, -1 if none
    # [] float32 eV, the temperature controller's state: the last kT (NaN before the first)
    kT: jax.Array = float("nan")
    force_head: object = None  # force-head parameters with guidance on (`guidance.ForceHead`)
    ess_average: object = None  # [] the ESS-sized buffer's average ESS (NaN before the first)


class IterationInfo(NamedTuple):
    buffer_energies: jax.Array  # [K] eV
    buffer_weights: jax.Array  # [K]
    buffer_valid: jax.Array  # [K] bool
    steps: StepStats  # per training step: loss, gradient norm, skipped, held-out loss
    lr_scale: jax.Array  # [] reduce-on-plateau multiplier
    params_finite: jax.Array  # [] bool, every model parameter finite after training
    kT: jax.Array  # [] eV, the temperature the buffer was drawn at
    valid: jax.Array  # [N] bool, the structures archived (the one validity mask of a batch)
    heat_capacity: jax.Array  # [] Var(E) / kT_prev^2 of this iteration's valid samples
    force_loss: jax.Array = float("nan")  # [force steps] force-head loss, (eV/Å)^2
    ess: jax.Array = float("nan")  # [] ESS of the archived batch at the last kT (this one's first)
    n_buffer: jax.Array = 0  # [] structures in the training buffer


def temperature(config: SearchConfig) -> Temperature:
    """The kT controller the config asks for: the fixed schedule or the adaptive one."""
    b = config.buffer
    if b.adaptive_kT:
        return adaptive_temperature(b.kT_start, b.kT_hot_factor, b.kT_cold_factor, b.kT_spread)
    if config.ess_sampling:  # the number of iterations is not known: cool over the budget
        s = config.sampler
        return budget_temperature(b.kT_start, b.kT_end, s.ess_first, s.max_evaluations)
    return fixed_temperature(config.kT_schedule())


def refine_rows(n_samples: int, fraction: float) -> np.ndarray:
    """[n_samples] bool: the batch rows refinement starts from archived structures,
    round(fraction x n_samples) of them spread evenly (every other row at one half)."""
    rows = np.arange(n_samples)
    n = round(fraction * n_samples)
    return (rows + 1) * n // n_samples > rows * n // n_samples


class GODiff:
    """A GO-Diff search on one system: the model, optimizer and the pure phases.

    Pure pieces for user code: `init_state`, `sample`, `update` and `iteration` all act on
    one seed's RunState; `runner.run` drives several seeds vmapped.
    """

    def __init__(
        self,
        system: System,
        config: SearchConfig = SearchConfig(),
        sample_sharding: jax.sharding.Sharding | None = None,
    ):
        self.system = system
        self.config = config
        self.sample_sharding = sample_sharding  # the sample axis over devices, or None
        self.model = ScoreModel(system, config.model)
        t = config.training
        self.optimizer = make_optimizer(
            t.learning_rate,
            t.weight_decay,
            t.clip_norm,
            t.plateau_factor,
            t.plateau_patience,
            steps_per_epoch=config.steps_per_epoch,
        )
        self.temperature = temperature(config)
        self.force_head = ForceHead(config.model.features) if config.guidance.ffg else None

    def init_state(
        self, key: jax.Array, params: object | None = None, force_head: object | None = None
    ) -> RunState:
        """Fresh state; `params` (e.g. from another system's run) initialise the model, and
        `force_head` the force head (with guidance on; fresh if None)."""
        key_params, key_run = jax.random.split(key)
        if params is None:
            params = self.model.init(key_params)
        if self.force_head is not None and force_head is None:
            force_head = self.force_head.init(jax.random.fold_in(key_params, 1))
        c = self.config
        return RunState(
            key=key_run,
            iteration=jnp.zeros((), jnp.int32),
            train=init_train_state(params, self.optimizer),
            archive=init_archive(c.n_iterations * c.sampler.n_samples, self.system.n_mobile),
            n_evaluations=jnp.zeros((), jnp.int32),
            first_success=jnp.full((), -1, jnp.int32),
            kT=self.temperature.init(),
            force_head=force_head if self.force_head is not None else None,
            ess_average=jnp.full((), jnp.nan, jnp.float32) if c.buffer.ess_buffer else None,
        )

    def sample(self, state: RunState) -> tuple[jax.Array, jax.Array]:
        """N structures from the current model and the mask of those far enough apart."""
        c = self.config.sampler
        params = state.train.params
        ctx = self.model.context(params)
        x_init = t_start = None
        if c.refine_fraction > 0:
            x_init, t_start = self._refine_starts(state)
            if c.refine_t0 == 1.0:  # every row runs the whole trajectory: no per-step mask
                t_start = None
        x = reverse_sample(
            jax.random.fold_in(state.key, 0),
            lambda x, t: self.model.apply(params, ctx, x, t),
            self.system,
            c.n_samples,
            n_steps=c.n_reverse_steps,
            t_end=c.t_end,
            sde=self.config.sde,
            x_init=x_init,
            t_start=t_start,
            truncate_z=c.reverse_truncated_z,
            corrector=self._corrector(state, ctx),
            sharding=self.sample_sharding,
        )
        # NaN positions fail this test too; the runner reports them apart from close pairs.
        ok = jax.vmap(lambda xi: min_distance(self.system, xi))(x) >= c.min_distance
        return x, ok

    def _refine_starts(self, state: RunState) -> tuple[jax.Array, jax.Array]:
        """(x_init [N, M, 3], t_start [N]) with refinement on: a refine_fraction share of
        the rows, spread evenly over the batch (so that ESS chunks hold both kinds), starts
        from the refine_pool lowest archived structures noised to the marginal at
        refine_t0; the others (and all while the archive holds no valid structure) from the
        prior at t = 1."""
        c, sde = self.config.sampler, self.config.sde
        n, pool = c.n_samples, min(c.refine_pool, state.archive.energies.shape[0])
        key_prior, key_noise = jax.random.split(jax.random.fold_in(state.key, 3))
        x = sample_prior(key_prior, self.system, n)
        a = state.archive
        lowest, index = jax.lax.top_k(jnp.where(a.valid, -a.energies, -jnp.inf), pool)
        refine = jnp.asarray(refine_rows(n, c.refine_fraction))
        slot = jnp.cumsum(refine) % pool  # cycles through the pool
        noise = jax.random.normal(key_noise, x.shape, x.dtype)
        start = self.system.confine(
            a.positions[index[slot]] + jnp.sqrt(marginal_var(sde, c.refine_t0)) * noise
        )
        refine = refine & jnp.isfinite(lowest[slot])
        x = jnp.where(refine[:, None, None], start, x)
        return x, jnp.where(refine, c.refine_t0, 1.0).astype(x.dtype)

    def keep(self, state: RunState, energies: jax.Array, ok: jax.Array) -> jax.Array:
        """[N] bool: the evaluated structures this iteration keeps with ESS-driven
        sampling (`ess.kept_samples`; `ok` unchanged without it): the chunks up to the ESS
        target at the last kT, within the evaluation budget. Energies past the chunks
        kept never reach anything (a host evaluator does not even compute them)."""
        s = self.config.sampler
        if s.ess_target is None:
            return ok
        remaining = s.max_evaluations - state.n_evaluations
        return ess.kept_samples(
            energies, ok, state.kT, s.ess_chunk, s.ess_target, s.ess_first, remaining
        )

    def _corrector(self, state: RunState, ctx):
        """The force-field guidance corrector (None with guidance off); off in the first
        iteration, whose force head has seen no forces yet."""
        if self.force_head is None:
            return None
        g = self.config.guidance
        params = state.train.params
        forces = predicted_forces(self.model, self.force_head, params, state.force_head, ctx)
        return force_corrector(
            forces,
            self.system,
            scale=g.ffg_scale,
            per_dt=g.ffg_per_dt,
            zeta=g.ffg_zeta,
            memory=g.ffg_memory,
            max_step=g.ffg_max_step,
            h0=g.ffg_h0,
            on=state.iteration > 0,
        )

    def _train_forces(self, state: RunState, key: jax.Array, archive: Archive):
        """(score params with the representation trained on forces, force head, losses)."""
        g, t = self.config.guidance, self.config.training
        return train_force_head(
            self.model,
            self.force_head,
            self.optimizer,
            state.train.params,
            state.force_head,
            key,
            archive,
            n_steps=t.train_steps if g.force_train_steps is None else g.force_train_steps,
            batch_size=t.batch_size,
            force_cap=g.force_clip,
        )

    def _buffer(self, state: RunState, archive: Archive, kT, energies, valid):
        """(training buffer, ESS of the batch, the ESS average): drawn at kT, of
        buffer_size or, with ess_buffer, of the size set by the average ESS of the
        archive's weights at kT (large while hot, small once one basin dominates)."""
        b = self.config.buffer
        kT_ref = jnp.where(jnp.isfinite(state.kT), state.kT, kT)
        batch_ess = ess.effective_sample_size(energies, valid, kT_ref)
        key = jax.random.fold_in(state.key, 1)
        buffer = select_buffer(key, archive, kT, self.config.buffer_capacity)
        average = state.ess_average
        if b.ess_buffer:
            buffer, average = self._ess_sized(state, archive, kT, buffer)
        if b.loss_weights == "uniform":
            buffer = uniform_weights(buffer)
        return buffer, batch_ess, average

    def _ess_sized(self, state: RunState, archive: Archive, kT, buffer):
        b = self.config.buffer
        size, average = ess.buffer_size(
            state.ess_average,
            ess.effective_sample_size(archive.energies, archive.valid, kT),
            b.ess_buffer_decay,
            b.ess_buffer_factor,
            b.ess_buffer_min,
            b.ess_buffer_max,
        )
        return truncate_buffer(buffer, size, kT), average

    def _train(self, state: RunState, key: jax.Array, buffer) -> tuple[TrainState, StepStats]:
        t = self.config.training
        train = state.train
        if t.fresh_optimizer:
            train = reset_optimizer(train, self.optimizer)
        elif t.reset_plateau_each_iteration:
            train = reset_plateau(train, self.optimizer)
        all_atoms = t.loss_normalisation == "all_atoms"
        if t.polish_step > 0:
            buffer = polish_buffer(self.system, buffer, t.polish_step, t.polish_max_step)
        return run_train_steps(
            self.model,
            self.optimizer,
            train,
            key,
            buffer.positions,
            buffer.weights,
            n_steps=t.train_steps,
            batch_size=t.batch_size,
            sde=self.config.sde,
            convention=t.score_convention,
            bounds=noise_bounds(self.system) if t.truncated_noise else None,
            node_fraction=self.system.n_mobile / self.system.n_atoms if all_atoms else 1.0,
            n_holdout=self.config.n_holdout,
            stop=t.stop_rule,
            # A buffer not full (ESS-sized, or a first iteration of few samples): epochs
            # over the structures it holds.
            n_used=jnp.sum(buffer.valid) if self._varying_buffer else None,
        )

    @property
    def _varying_buffer(self) -> bool:
        return self.config.buffer.ess_buffer or self.config.ess_sampling

    def update(
        self,
        state: RunState,
        x: jax.Array,
        energies: jax.Array,
        forces: jax.Array,
        ok: jax.Array,
    ) -> tuple[RunState, IterationInfo]:
        """Archive the evaluated batch, redraw the buffer at this iteration's kT and train.

        The one validity mask of the batch: passed the distance filter (`ok`), finite
        energy and forces, above `energy_floor`.
        """
        c = self.config
        valid = ok & jnp.isfinite(energies) & jnp.all(jnp.isfinite(forces), axis=(-2, -1))
        if c.buffer.energy_floor is not None:
            valid = valid & (energies > c.buffer.energy_floor)
        archive = add_to_archive(state.archive, x, energies, forces, valid, state.iteration)
        _, heat = heat_capacity_kT(energies, valid, state.kT, spread=c.buffer.kT_spread)
        n_evaluations = state.n_evaluations + jnp.sum(ok).astype(jnp.int32)
        progress = n_evaluations if c.ess_sampling else state.iteration
        kT, kT_state = self.temperature.update(state.kT, progress, energies, valid)
        if c.buffer.kT_ess_floor is not None:
            kT = jnp.maximum(
                kT,
                ess.ess_temperature(
                    archive.energies, archive.valid, c.buffer.kT_ess_floor, kT_hi=c.buffer.kT_start
                ),
            )
            kT_state = kT
        buffer, batch_ess, ess_average = self._buffer(state, archive, kT, energies, valid)
        force_head, force_loss = state.force_head, jnp.full((), jnp.nan)
        if self.force_head is not None:
            # The force head first, on every evaluated structure, as the reference does.
            params, force_head, fstats = self._train_forces(
                state, jax.random.fold_in(state.key, 4), archive
            )
            state = state._replace(train=state.train._replace(params=params))
            force_loss = fstats.loss
        train, stats = self._train(state, jax.random.fold_in(state.key, 2), buffer)
        new = state._replace(
            key=jax.random.fold_in(state.key, 3),
            iteration=state.iteration + 1,
            train=train,
            archive=archive,
            n_evaluations=n_evaluations,
            kT=kT_state,
            force_head=force_head,
            ess_average=ess_average,
        )
        if c.ess_sampling:  # a seed whose budget is spent stays as it was
            active = state.n_evaluations < c.sampler.max_evaluations
            new = jax.tree_util.tree_map(lambda a, b: jnp.where(active, a, b), new, state)
        trained = (train.params, force_head)
        finite = jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree_util.tree_leaves(trained)])
        )
        info = IterationInfo(
            buffer_energies=buffer.energies,
            buffer_weights=buffer.weights,
            buffer_valid=buffer.valid,
            steps=stats,
            lr_scale=learning_rate_scale(train),
            params_finite=finite,
            kT=jnp.asarray(kT, jnp.float32),
            valid=valid,
            heat_capacity=heat,
            force_loss=force_loss,
            ess=batch_ess,
            n_buffer=jnp.sum(buffer.valid).astype(jnp.int32),
        )
        return new, info

    def iteration(self, state: RunState, energy_fn: EnergyFn) -> tuple[RunState, IterationInfo]:
        """One whole GO-Diff iteration with a JAX energy model (pure; jit it yourself)."""
        x, ok = self.sample(state)
        e, f = JaxEvaluator(energy_fn).batch(x)
        return self.update(state, x, e, f, self.keep(state, e, ok))
