"""The GO-Diff search: one iteration as pure functions, and the host loop `run`.

An iteration (DESIGN.md section 1): sample N structures from the reverse SDE -> mask pairs
closer than `min_distance` -> evaluate energies and forces -> add to the archive -> redraw
the buffer at kT_k -> train the score model. The three phases (sample, evaluate, update)
are separate jitted functions, each vmapped over a leading seed axis of the RunState, so
eight seeds run as one program, and the energy model may be any ASE calculator on the
host between them.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from godiff_jax import checkpoint, io
from godiff_jax.analysis import min_distance
from godiff_jax.buffer import Archive, add_to_archive, init_archive, select_buffer
from godiff_jax.model import ScoreModel, ScoreModelConfig
from godiff_jax.sampler import reverse_sample
from godiff_jax.schedule import exponential_kT
from godiff_jax.sde import VESDE, noise_bounds
from godiff_jax.system import System
from godiff_jax.train import (
    StepStats,
    StopRule,
    TrainState,
    init_train_state,
    learning_rate_scale,
    make_optimizer,
    reset_optimizer,
    reset_plateau,
)
from godiff_jax.train import train_steps as run_train_steps

# energy_fn(mobile_positions [M, 3] Å) -> total energy (eV); forces come from jax.grad.
EnergyFn = Callable[[jax.Array], jax.Array]
# success_fn(positions [N, M, 3], energies [N], valid [N]) -> bool [N] (host side, numpy)
SuccessFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Hyperparameters of one GO-Diff run; defaults are the paper's heptamer settings."""

    n_iterations: int = 20
    n_samples: int = 128  # structures sampled and evaluated per iteration
    buffer_size: int = 64
    batch_size: int = 16
    train_steps: int = 8000  # optimizer steps per iteration (2000 epochs of 64 / 16)
    kT_start: float = 5.0  # eV
    kT_end: float = 0.02  # eV
    n_reverse_steps: int = 500
    t_end: float = 0.005
    sigma_min: float = 0.01  # Å
    sigma_max: float = 1.0  # Å
    min_distance: float = 1.0  # Å; closer pairs are discarded before evaluation
    energy_floor: float | None = None  # eV; lower energies are masked (ML-potential holes)
    score_convention: str = "reference"  # or "textbook" (loss.dsm_error)
    # The reference's choices (issue 8; `reference_faithful` turns all of them on):
    truncated_noise: bool = False  # training noise truncated to the box in z (TruncatedNormal)
    loss_normalisation: str = "mobile"  # or "all_atoms": per-atom mean over template too
    fresh_optimizer: bool = False  # new AdamW + plateau state every iteration (Lightning `fit`)
    holdout_fraction: float = 0.0  # buffer share held out; its loss drives the plateau
    reverse_truncated_z: bool = False  # reverse-step noise truncated to the box, then clamp
    # Adaptive controllers of go-diff 1.1.0 (issue 16), off by default until measured:
    train_stop: bool = False  # momentum-consensus stop; train_steps becomes the cap
    stop_warmup: int = 50
    stop_patience: int = 100
    stop_fraction: float = 0.5
    adaptive_kT: bool = False  # kT_0 = std(E) of the first samples, then x0.95 / x0.5
    kT_hot_factor: float = 0.95  # while the heat capacity Var(E) / kT^2 exceeds 1
    kT_cold_factor: float = 0.5  # once it does not
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    clip_norm: float = 10.0
    plateau_factor: float = 0.95
    plateau_patience: int = 100  # epochs
    reset_plateau_each_iteration: bool = True  # as the reference's per-iteration `fit`
    features: int = 64
    n_blocks: int = 4
    n_rbf: int = 30
    cutoff: float = 6.0  # Å

    @property
    def sde(self) -> VESDE:
        return VESDE(self.sigma_min, self.sigma_max)

    @property
    def model_config(self) -> ScoreModelConfig:
        return ScoreModelConfig(
            features=self.features, n_blocks=self.n_blocks, n_rbf=self.n_rbf, cutoff=self.cutoff
        )

    def __post_init__(self):
        if self.score_convention not in ("reference", "textbook"):
            raise ValueError(
                f"score_convention: 'reference' or 'textbook', got {self.score_convention!r}"
            )
        if self.loss_normalisation not in ("mobile", "all_atoms"):
            raise ValueError(
                f"loss_normalisation: 'mobile' or 'all_atoms', got {self.loss_normalisation!r}"
            )
        if not 0.0 <= self.holdout_fraction < 1.0 or self.n_train < 1:
            raise ValueError(
                f"holdout_fraction must leave training structures, got {self.holdout_fraction}"
            )

    @property
    def stop_rule(self) -> StopRule | None:
        if not self.train_stop:
            return None
        return StopRule(self.stop_warmup, self.stop_patience, self.stop_fraction)

    @property
    def n_holdout(self) -> int:
        """Buffer structures held out of training (torch's random_split rounding)."""
        return int(np.floor(self.buffer_size * self.holdout_fraction))

    @property
    def n_train(self) -> int:
        return self.buffer_size - self.n_holdout

    @property
    def steps_per_epoch(self) -> int:
        """Minibatches per pass over the training structures (as `train.train_steps` walks them)."""
        return max(1, self.n_train // min(self.batch_size, self.n_train))

    def kT_schedule(self) -> np.ndarray:
        return exponential_kT(self.kT_start, self.kT_end, self.n_iterations)


# Named overlays on a system's settings. "reference": every choice of the authors' code that
# differs from ours (issue 8): truncated training noise, the loss averaged over all atoms,
# a fresh optimizer per iteration, a 90/10 buffer split driving the plateau scheduler,
# truncated reverse-step noise, and their score convention.
PRESETS: dict[str, dict[str, object]] = {
    "reference": {
        "score_convention": "reference",
        "truncated_noise": True,
        "loss_normalisation": "all_atoms",
        "fresh_optimizer": True,
        "holdout_fraction": 0.1,
        "reverse_truncated_z": True,
    },
}


def apply_preset(config: SearchConfig, name: str | None) -> SearchConfig:
    """`config` with the named preset's fields set (None: unchanged)."""
    if name is None:
        return config
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(config, **PRESETS[name])


class RunState(NamedTuple):
    """Everything a run needs to continue; every leaf may carry a leading seed axis."""

    key: jax.Array  # PRNG key, advanced once per iteration
    iteration: jax.Array  # [] int32, iterations completed
    train: TrainState
    archive: Archive
    n_evaluations: jax.Array  # [] int32, energy evaluations so far
    first_success: jax.Array  # [] int32, evaluation index of the first success, -1 if none
    first_success_s: jax.Array  # [] float32, wall seconds into the run at first success
    elapsed_s: jax.Array  # [] float32, wall seconds spent in the run so far
    # [] float32 eV, the last iteration's temperature (NaN before the first); the default
    # lets a pickle of an older RunState (without it) be unpickled by `godiff_jax.legacy`.
    kT: jax.Array = float("nan")


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


class GODiff:
    """A GO-Diff search on one system: the model, optimizer and jitted phases.

    Pure pieces for user code: `init_state`, `sample`, `evaluate`, `update` and
    `iteration` all act on one seed's RunState; `run` drives several seeds vmapped.
    """

    def __init__(self, system: System, config: SearchConfig = SearchConfig()):
        self.system = system
        self.config = config
        self.model = ScoreModel(system, config.model_config)
        self.optimizer = make_optimizer(
            config.learning_rate,
            config.weight_decay,
            config.clip_norm,
            config.plateau_factor,
            config.plateau_patience,
            steps_per_epoch=config.steps_per_epoch,
        )

    # -- pure, single-seed pieces ------------------------------------------------------
    def init_state(self, key: jax.Array, params: object | None = None) -> RunState:
        """Fresh state; `params` (e.g. from another system's run) initialise the model."""
        key_params, key_run = jax.random.split(key)
        if params is None:
            params = self.model.init(key_params)
        c = self.config
        return RunState(
            key=key_run,
            iteration=jnp.zeros((), jnp.int32),
            train=init_train_state(params, self.optimizer),
            archive=init_archive(c.n_iterations * c.n_samples, self.system.n_mobile),
            n_evaluations=jnp.zeros((), jnp.int32),
            first_success=jnp.full((), -1, jnp.int32),
            first_success_s=jnp.full((), jnp.nan, jnp.float32),
            elapsed_s=jnp.zeros((), jnp.float32),
            kT=jnp.full((), jnp.nan, jnp.float32),
        )

    def sample(self, state: RunState) -> tuple[jax.Array, jax.Array]:
        """N structures from the current model and the mask of those far enough apart."""
        c = self.config
        params = state.train.params
        ctx = self.model.context(params)
        x = reverse_sample(
            jax.random.fold_in(state.key, 0),
            lambda x, t: self.model.apply(params, ctx, x, t),
            self.system,
            c.n_samples,
            c.n_reverse_steps,
            c.t_end,
            c.sde,
            truncate_z=c.reverse_truncated_z,
        )
        # NaN positions fail this test too; `run` reports them apart from close pairs.
        ok = jax.vmap(lambda xi: min_distance(self.system, xi))(x) >= c.min_distance
        return x, ok

    @staticmethod
    def evaluate(energy_fn: EnergyFn, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Energies [N] (eV) and forces [N, M, 3] (eV/Å) of a batch with a JAX model."""
        e, g = jax.vmap(jax.value_and_grad(energy_fn))(x)
        return e, -g

    def update(
        self,
        state: RunState,
        x: jax.Array,
        energies: jax.Array,
        forces: jax.Array,
        ok: jax.Array,
        kT: jax.Array,
    ) -> tuple[RunState, IterationInfo]:
        """Archive the evaluated batch, redraw the buffer at kT (eV) and train.

        With `adaptive_kT` the given kT is ignored: the temperature follows from this
        batch's energies and the state's last kT (`adaptive_temperature`).
        """
        c = self.config
        valid = ok & jnp.isfinite(energies) & jnp.all(jnp.isfinite(forces), axis=(-2, -1))
        if c.energy_floor is not None:
            valid = valid & (energies > c.energy_floor)
        archive = add_to_archive(state.archive, x, energies, forces, valid, state.iteration)
        kT_next, heat = adaptive_temperature(
            energies, valid, state.kT, c.kT_hot_factor, c.kT_cold_factor
        )
        if c.adaptive_kT:  # no valid energy yet: start from kT_start; never divide by 0
            kT = jnp.maximum(jnp.where(jnp.isfinite(kT_next), kT_next, c.kT_start), 1e-6)
        buffer = select_buffer(jax.random.fold_in(state.key, 1), archive, kT, c.buffer_size)
        train = state.train
        if c.fresh_optimizer:
            train = reset_optimizer(train, self.optimizer)
        elif c.reset_plateau_each_iteration:
            train = reset_plateau(train, self.optimizer)
        train, stats = run_train_steps(
            self.model,
            self.optimizer,
            train,
            jax.random.fold_in(state.key, 2),
            buffer.positions,
            buffer.weights,
            c.train_steps,
            c.batch_size,
            c.sde,
            c.score_convention,
            noise_bounds(self.system) if c.truncated_noise else None,
            self.system.n_mobile / self.system.n_atoms
            if c.loss_normalisation == "all_atoms"
            else 1.0,
            c.n_holdout,
            c.stop_rule,
        )
        new = state._replace(
            key=jax.random.fold_in(state.key, 3),
            iteration=state.iteration + 1,
            train=train,
            archive=archive,
            n_evaluations=state.n_evaluations + jnp.sum(ok).astype(jnp.int32),
            kT=jnp.asarray(kT, jnp.float32),
        )
        finite = jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree_util.tree_leaves(train.params)])
        )
        info = IterationInfo(
            buffer.energies,
            buffer.weights,
            buffer.valid,
            stats,
            learning_rate_scale(train),
            finite,
            jnp.asarray(kT, jnp.float32),
            valid,
            heat,
        )
        return new, info

    def iteration(
        self, state: RunState, energy_fn: EnergyFn, kT: jax.Array
    ) -> tuple[RunState, IterationInfo]:
        """One whole GO-Diff iteration with a JAX energy model (pure; jit it yourself)."""
        x, ok = self.sample(state)
        e, f = self.evaluate(energy_fn, x)
        return self.update(state, x, e, f, ok, kT)


def adaptive_temperature(
    energies: jax.Array,
    valid: jax.Array,
    kT_prev: jax.Array,
    hot_factor: float = 0.95,
    cold_factor: float = 0.5,
) -> tuple[jax.Array, jax.Array]:
    """(kT, heat capacity) after a batch of energies (eV), as go-diff 1.1.0 anneals.

    First batch (kT_prev NaN): kT = std(E). Later: C = Var(E) / kT_prev^2 of the valid
    energies; kT = kT_prev * hot_factor while C > 1 (the samples still span more than kT:
    cool slowly), else kT_prev * cold_factor. Fewer than two valid energies keep kT_prev.
    """
    n = jnp.sum(valid)
    e = jnp.where(valid, energies, 0.0)
    mean = jnp.sum(e) / jnp.maximum(n, 1)
    var = jnp.sum(jnp.where(valid, (e - mean) ** 2, 0.0)) / jnp.maximum(n, 1)
    first = ~jnp.isfinite(kT_prev)
    heat = jnp.where(first, jnp.nan, var / jnp.where(first, 1.0, kT_prev) ** 2)
    cooled = kT_prev * jnp.where(heat > 1.0, hot_factor, cold_factor)
    kT = jnp.where(first, jnp.sqrt(var), cooled)
    return jnp.where(n >= 2, kT, kT_prev).astype(jnp.float32), heat.astype(jnp.float32)


@functools.lru_cache(maxsize=8)
def _default_energy(system: System) -> EnergyFn:
    from godiff_jax.potentials.emt import emt_energy_fn

    return emt_energy_fn(system)


def _over_seeds(fn: Callable, n_seeds: int, in_axes: tuple, seed_batch: int) -> Callable:
    """One jitted program applying fn to every seed (the leading axis of in_axes=0 args).

    `seed_batch` seeds at a time are vmapped together (`lax.map(..., batch_size)`);
    seed_batch >= n_seeds is a plain vmap. One seed squeezes the axis instead: with the
    model of commit 30ae0b6, XLA CPU ran a size-1 vmapped training scan ~2x slower.
    """
    mapped = [ax is not None for ax in in_axes]

    def squeeze(args):
        return [
            jax.tree_util.tree_map(lambda v: v[0], a) if m else a
            for a, m in zip(args, mapped, strict=True)
        ]

    if n_seeds == 1:
        return jax.jit(lambda *args: jax.tree_util.tree_map(lambda v: v[None], fn(*squeeze(args))))
    if seed_batch >= n_seeds:
        return jax.jit(jax.vmap(fn, in_axes=in_axes))

    def looped(*args):
        per_seed = [a for a, m in zip(args, mapped, strict=True) if m]

        def one(xs):
            it = iter(xs)
            return fn(*[next(it) if m else a for a, m in zip(args, mapped, strict=True)])

        return jax.lax.map(one, per_seed, batch_size=seed_batch if seed_batch > 1 else None)

    return jax.jit(looped)


@functools.lru_cache(maxsize=8)
def _compiled_phases(
    system: System,
    config: SearchConfig,
    energy_fn: EnergyFn | None,
    n_seeds: int = 1,
    seed_batch: int | None = None,
):
    """The jitted phases over a leading seed axis; cached so repeated runs do not recompile."""
    search = GODiff(system, config)
    # Default: all seeds vmapped (8 seeds train in 0.53x the time of 8 runs on the 2-core
    # CPU, RESULTS.md section 7); fewer loop over groups, for memory.
    sb = n_seeds if seed_batch is None else max(1, seed_batch)
    sample_fn = _over_seeds(search.sample, n_seeds, (0,), sb)
    eval_fn = None
    if energy_fn is not None:
        eval_fn = _over_seeds(lambda x: search.evaluate(energy_fn, x), n_seeds, (0,), sb)
    update_fn = _over_seeds(search.update, n_seeds, (0, 0, 0, 0, 0, None), sb)
    return search, sample_fn, eval_fn, update_fn


def run(
    system: System,
    config: SearchConfig,
    workdir: str | Path,
    seeds: int | list[int] = 0,
    energy_fn: EnergyFn | None = None,
    calculator=None,
    success_fn: SuccessFn | None = None,
    init_params: object | None = None,
    max_iterations: int | None = None,
    progress: bool = True,
    seed_batch: int | None = None,
) -> RunState:
    """Run (or resume) GO-Diff for one or more seeds as one compiled program.

    Energies come from `energy_fn` (a JAX model, inside jit; default the JAX EMT) or from
    an ASE `calculator` on the host. `workdir` gets config.json, checkpoint.msgpack (after
    every iteration, the one before kept as checkpoint.prev.msgpack), structures.db (ASE database) and metrics.jsonl; running again on the
    same directory resumes where it stopped. `max_iterations` stops early (the run can be
    resumed later). `seed_batch` seeds are vmapped together inside each phase (default:
    all of them; fewer loops over groups, for memory); each seed's results are
    those of a separate run with that seed. Returns the final RunState (leading seed axis).
    """
    from godiff_jax.ase_interop import evaluate_with_calculator

    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    io.write_config(workdir, config)
    if energy_fn is None and calculator is None:
        energy_fn = _default_energy(system)
    search, sample_fn, eval_fn, update_fn = _compiled_phases(
        system, config, energy_fn, len(seeds), seed_batch
    )
    kTs = config.kT_schedule()

    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    if init_params is not None:
        init_params = checkpoint.check_params(
            init_params, jax.eval_shape(search.model.init, jax.random.PRNGKey(0))
        )
    init = jax.jit(jax.vmap(lambda k: search.init_state(k, init_params)))
    saved = checkpoint.load_checkpoint(workdir, jax.eval_shape(init, keys))
    if saved is not None:
        saved_state, meta = saved
        if list(meta["seeds"]) != seeds:
            raise ValueError(f"{workdir} holds seeds {meta['seeds']}, asked for {seeds}")
        state = jax.tree_util.tree_map(jnp.asarray, saved_state)
        start = int(meta["iteration"])
        io.truncate_outputs(workdir, start)
    else:
        state = init(keys)
        start = 0

    stop = (
        config.n_iterations if max_iterations is None else min(config.n_iterations, max_iterations)
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.n_iterations, initial=start, desc=system.name, unit="it")
    for k in range(start, stop):
        t0 = time.perf_counter()
        kT = float(kTs[k])
        x, ok = jax.block_until_ready(sample_fn(state))
        t1 = time.perf_counter()
        if eval_fn is not None:
            e, f = jax.block_until_ready(eval_fn(x))
        else:
            xs, oks = np.asarray(x), np.asarray(ok)
            e = np.full(oks.shape, np.nan)
            f = np.zeros(xs.shape)
            for s in range(len(seeds)):
                idx = np.flatnonzero(oks[s])
                if len(idx):
                    es, fs, vs = evaluate_with_calculator(system, xs[s, idx], calculator)
                    e[s, idx] = np.where(vs, es, np.nan)
                    f[s, idx] = fs
            e, f = jnp.asarray(e, jnp.float32), jnp.asarray(f, jnp.float32)
        t2 = time.perf_counter()
        prev_evals = np.asarray(state.n_evaluations)
        state, info = jax.block_until_ready(update_fn(state, x, e, f, ok, kT))
        t3 = time.perf_counter()

        batch = EvaluatedBatch(
            *(np.asarray(a) for a in (x, ok, e, f)), prev_evals, (t1 - t0, t2 - t1, t3 - t2)
        )
        state = _record(workdir, system, seeds, k, state, info, batch, success_fn, config)
        checkpoint.save_checkpoint(workdir, state, {"seeds": seeds, "iteration": k + 1})
        if bar is not None:
            best = np.nanmin(
                np.where(np.asarray(state.archive.valid), state.archive.energies, np.nan)
            )
            bar.set_postfix(kT=f"{float(np.nanmean(np.asarray(state.kT))):.3g}", best=f"{best:.4f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    return state


class EvaluatedBatch(NamedTuple):
    """One iteration's structures on the host, every array with a leading seed axis."""

    x: np.ndarray  # [S, N, M, 3] Å
    ok: np.ndarray  # [S, N] bool, passed the distance filter (and so was evaluated)
    e: np.ndarray  # [S, N] eV (NaN: not evaluated or failed)
    f: np.ndarray  # [S, N, M, 3] eV/Å
    prev_evals: np.ndarray  # [S] evaluations before this iteration
    seconds: tuple[float, float, float]  # sampling, evaluating, training


def _record(
    workdir: Path,
    system: System,
    seeds: list[int],
    k: int,
    state: RunState,
    info: IterationInfo,
    batch: EvaluatedBatch,
    success_fn: SuccessFn | None,
    config: SearchConfig,
) -> RunState:
    """Write structures and metrics for iteration k; note first successes in the state."""
    x, ok, e, f, prev_evals, seconds = batch
    elapsed = np.asarray(state.elapsed_s) + sum(seconds)
    first = np.asarray(state.first_success).copy()
    first_s = np.asarray(state.first_success_s).copy()
    rows = []
    for s, seed in enumerate(seeds):
        kT = float(np.asarray(info.kT[s]))  # the fixed schedule's, or the adaptive one
        # The archive's mask (finite energy and forces, above energy_floor): what is written
        # and tested for success is exactly what the search kept.
        valid = np.asarray(info.valid[s])
        arch_e = np.where(
            np.asarray(state.archive.valid[s]), np.asarray(state.archive.energies[s]), np.nan
        )
        e_min = np.nanmin(arch_e) if np.any(np.isfinite(arch_e)) else np.nan
        order = np.cumsum(ok[s])  # evaluation index of each structure within the run
        idx = np.flatnonzero(valid)
        io.write_structures(
            workdir,
            system,
            x[s, idx],
            e[s, idx],
            f[s, idx],
            [
                {
                    "iteration": k,
                    "kT": kT,
                    "seed": seed,
                    "evaluation": int(prev_evals[s] + order[i]),
                    "weight": float(np.exp(-(e[s, i] - e_min) / kT)),
                }
                for i in idx
            ],
        )
        if success_fn is not None and first[s] < 0 and len(idx):
            hit = np.flatnonzero(np.asarray(success_fn(x[s], e[s], valid)) & valid)
            if len(hit):
                first[s] = int(prev_evals[s] + order[hit[0]])
                # Generated once sampling and evaluation of iteration k were done.
                found = elapsed - seconds[2]
                first_s[s] = float(found[s] if np.ndim(found) else found)
        losses = np.asarray(info.steps.loss[s])
        gnorm = np.asarray(info.steps.grad_norm[s])
        skipped = np.asarray(info.steps.skipped[s])
        taken = np.asarray(info.steps.taken[s])
        val = np.asarray(info.steps.val_loss[s])
        losses, gnorm, skipped, val = losses[taken], gnorm[taken], skipped[taken], val[taken]
        used = ~skipped
        spe = config.steps_per_epoch
        finite_x = np.all(np.isfinite(x[s]), axis=(-2, -1))
        params_ok = bool(np.asarray(info.params_finite[s]))
        if not params_ok or not finite_x.all() or skipped.any():
            print(
                f"warning: seed {seed} iteration {k}: {int(skipped.sum())} training steps "
                f"skipped (non-finite loss or gradient), {int((~finite_x).sum())} non-finite "
                f"samples, parameters {'finite' if params_ok else 'NOT FINITE'}"
            )
        bvalid = np.asarray(info.buffer_valid[s])
        be = np.asarray(info.buffer_energies[s])[bvalid]
        rows.append(
            {
                "iteration": k,
                "seed": seed,
                "kT": kT,
                "evaluations": int(np.asarray(state.n_evaluations[s])),
                "n_sampled": int(ok.shape[1]),
                "n_too_close": int((~ok[s] & finite_x).sum()),
                "n_nonfinite_samples": int((~finite_x).sum()),
                "n_invalid_energy": int((ok[s] & ~valid).sum()),  # NaN or below energy_floor
                "best_energy": float(e_min),
                "iteration_best_energy": float(np.nanmin(e[s][valid])) if valid.any() else None,
                "buffer_energy_min": float(be.min()) if be.size else None,
                "buffer_energy_mean": float(be.mean()) if be.size else None,
                "buffer_energy_max": float(be.max()) if be.size else None,
                "loss_mean": _mean_or_none(losses[used]),
                "loss_last_epoch": _mean_or_none(losses[-spe:][used[-spe:]]),
                "val_loss_last_epoch": _mean_or_none(val[-spe:][used[-spe:]]),
                "n_skipped_steps": int(skipped.sum()),
                "train_steps_taken": int(taken.sum()),
                "heat_capacity": _finite_or_none(float(np.asarray(info.heat_capacity[s]))),
                "grad_norm_median": _quantile_or_none(gnorm[used], 0.5),
                "grad_norm_p90": _quantile_or_none(gnorm[used], 0.9),
                "grad_norm_max": _quantile_or_none(gnorm[used], 1.0),
                "clipped_fraction": float(np.mean(gnorm[used] > config.clip_norm))
                if used.any()
                else None,
                "params_finite": params_ok,
                "lr_scale": float(np.asarray(info.lr_scale[s])),
                "first_success_evaluation": int(first[s]) if first[s] >= 0 else None,
                "first_success_seconds": float(first_s[s]) if first[s] >= 0 else None,
                "seconds_sampling": seconds[0],
                "seconds_evaluating": seconds[1],
                "seconds_training": seconds[2],
                "seconds_total": float(elapsed[s] if np.ndim(elapsed) else elapsed),
            }
        )
    io.append_metrics(workdir, rows)
    return state._replace(
        first_success=jnp.asarray(first),
        first_success_s=jnp.asarray(first_s, jnp.float32),
        elapsed_s=jnp.asarray(elapsed, jnp.float32),
    )


def _finite_or_none(v: float) -> float | None:
    return v if np.isfinite(v) else None


def _mean_or_none(a: np.ndarray) -> float | None:
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


def _quantile_or_none(a: np.ndarray, q: float) -> float | None:
    a = a[np.isfinite(a)]
    return float(np.quantile(a, q)) if a.size else None
