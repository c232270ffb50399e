"""What the host loop keeps of each iteration: the structures database and metrics rows.

`IterationRecord` is one iteration on the host (numpy, a leading seed axis): the sampled
batch, its one validity mask (`IterationInfo.valid`), the state's counters and the clock.
`write_structures` puts every evaluated structure in the database, valid=1 exactly for
the valid ones; `first_successes` applies the success test to exactly those;
`metrics_rows` writes one row per seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from godiff_jax import io
from godiff_jax.evaluate import NONFINITE
from godiff_jax.system import System


class RunClock(NamedTuple):
    """Wall-clock seconds per seed, kept by the host loop (not in the jitted state)."""

    elapsed_s: np.ndarray  # [S] seconds spent in the run so far
    first_success_s: np.ndarray  # [S] seconds into the run at the first success, NaN if none

    @classmethod
    def start(cls, n_seeds: int) -> RunClock:
        return cls(np.zeros(n_seeds), np.full(n_seeds, np.nan))

    def to_meta(self) -> dict[str, list]:
        return {
            "elapsed_s": [float(v) for v in self.elapsed_s],
            "first_success_s": [None if np.isnan(v) else float(v) for v in self.first_success_s],
        }

    @classmethod
    def from_meta(cls, meta: dict, n_seeds: int) -> RunClock:
        clock = meta.get("clock")
        if clock is None:
            return cls.start(n_seeds)
        first = [np.nan if v is None else v for v in clock["first_success_s"]]
        return cls(np.asarray(clock["elapsed_s"], float), np.asarray(first, float))


class IterationRecord(NamedTuple):
    """Iteration k of every seed, on the host."""

    k: int
    seeds: list[int]
    x: np.ndarray  # [S, N, M, 3] Å
    ok: np.ndarray  # [S, N] passed the distance filter (and so was evaluated)
    energies: np.ndarray  # [S, N] eV (NaN: not evaluated or failed)
    forces: np.ndarray  # [S, N, M, 3] eV/Å
    info: Any  # IterationInfo of host arrays
    prev_evaluations: np.ndarray  # [S] evaluations before this iteration
    n_evaluations: np.ndarray  # [S] after it
    archive_best: np.ndarray  # [S] eV, lowest valid energy archived so far (NaN if none)
    seconds: tuple[float, float, float]  # sampling, evaluating, training
    reasons: list | None = None  # [S][N] the evaluator's reason per failed structure
    not_kept: np.ndarray | None = None  # [S, N] past the ESS target: not evaluated, not counted

    def evaluation_index(self, s: int) -> np.ndarray:
        """[N] the run's evaluation number of each structure of seed s."""
        return self.prev_evaluations[s] + np.cumsum(self.ok[s])


def _reason(rec: IterationRecord, s: int, i: int) -> str:
    if rec.reasons is not None and rec.reasons[s][i] is not None:
        return rec.reasons[s][i]
    if not np.isfinite(rec.energies[s][i]) or not np.all(np.isfinite(rec.forces[s][i])):
        return NONFINITE
    return "below energy_floor"


def write_structures(workdir: Path, system: System, rec: IterationRecord) -> None:
    """Every evaluated structure of every seed into structures.db (replacing the rows the
    iteration wrote as results came): valid ones with their Boltzmann weight against the
    archive's best at this iteration's kT, the others with valid=0 and their reason."""
    structures = []
    for s, seed in enumerate(rec.seeds):
        kT = float(rec.info.kT[s])
        order = rec.evaluation_index(s)
        valid = rec.info.valid[s]
        e = rec.energies[s]
        for i in np.flatnonzero(rec.ok[s]):
            keys = {
                "iteration": rec.k,
                "kT": kT,
                "seed": seed,
                "evaluation": int(order[i]),
                "index": int(i),
                "valid": bool(valid[i]),
            }
            if valid[i]:
                keys["weight"] = float(np.exp(-(e[i] - rec.archive_best[s]) / kT))
            else:
                keys["reason"] = _reason(rec, s, i)
            structures.append((rec.x[s, i], e[i], rec.forces[s, i], keys))
    io.replace_iteration(workdir, system, rec.k, rec.seeds, structures)


def first_successes(
    rec: IterationRecord, success_fn, first: np.ndarray, clock: RunClock
) -> tuple[np.ndarray, RunClock]:
    """First success per seed (evaluation index, -1 if none) and the clock, after this
    iteration; the test sees only the valid structures of seeds without a success yet."""
    first = first.copy()
    first_s = clock.first_success_s.copy()
    # Generated once sampling and evaluation of iteration k were done.
    found_at = clock.elapsed_s - rec.seconds[2]
    for s in range(len(rec.seeds)):
        valid = rec.info.valid[s]
        if success_fn is None or first[s] >= 0 or not valid.any():
            continue
        hit = np.flatnonzero(np.asarray(success_fn(rec.x[s], rec.energies[s], valid)) & valid)
        if len(hit):
            first[s] = int(rec.evaluation_index(s)[hit[0]])
            first_s[s] = float(found_at[s])
    return first, clock._replace(first_success_s=first_s)


def _finite_or_none(v: float) -> float | None:
    return v if np.isfinite(v) else None


def _mean_or_none(a: np.ndarray) -> float | None:
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


def _quantile_or_none(a: np.ndarray, q: float) -> float | None:
    a = a[np.isfinite(a)]
    return float(np.quantile(a, q)) if a.size else None


def _training_metrics(steps, s: int, steps_per_epoch: int, clip_norm: float) -> dict:
    taken = np.asarray(steps.taken[s])
    losses, gnorm, skipped, val = (
        np.asarray(a[s])[taken]
        for a in (steps.loss, steps.grad_norm, steps.skipped, steps.val_loss)
    )
    used = ~skipped
    spe = steps_per_epoch
    return {
        "loss_mean": _mean_or_none(losses[used]),
        "loss_last_epoch": _mean_or_none(losses[-spe:][used[-spe:]]),
        "val_loss_last_epoch": _mean_or_none(val[-spe:][used[-spe:]]),
        "n_skipped_steps": int(skipped.sum()),
        "train_steps_taken": int(taken.sum()),
        "grad_norm_median": _quantile_or_none(gnorm[used], 0.5),
        "grad_norm_p90": _quantile_or_none(gnorm[used], 0.9),
        "grad_norm_max": _quantile_or_none(gnorm[used], 1.0),
        "clipped_fraction": float(np.mean(gnorm[used] > clip_norm)) if used.any() else None,
    }


def _force_metrics(force_loss, s: int) -> dict:
    """The force head's training loss (guidance on): mean of the first and last tenth."""
    loss = np.asarray(force_loss)
    if loss.ndim < 2:  # guidance off: one NaN per seed
        return {}
    row = loss[s]
    tenth = max(1, row.size // 10)
    return {
        "force_loss_first": _finite_or_none(float(np.nanmean(row[:tenth]))),
        "force_loss_last": _finite_or_none(float(np.nanmean(row[-tenth:]))),
    }


def warnings_for(rec: IterationRecord) -> list[str]:
    """A line per seed whose iteration had non-finite samples, steps or parameters."""
    lines = []
    for s, seed in enumerate(rec.seeds):
        finite_x = np.all(np.isfinite(rec.x[s]), axis=(-2, -1))
        skipped = np.asarray(rec.info.steps.skipped[s])[np.asarray(rec.info.steps.taken[s])]
        params_ok = bool(rec.info.params_finite[s])
        if not params_ok or not finite_x.all() or skipped.any():
            lines.append(
                f"warning: seed {seed} iteration {rec.k}: {int(skipped.sum())} training steps "
                f"skipped (non-finite loss or gradient), {int((~finite_x).sum())} non-finite "
                f"samples, parameters {'finite' if params_ok else 'NOT FINITE'}"
            )
    return lines


def metrics_rows(
    rec: IterationRecord, first: np.ndarray, clock: RunClock, config: Any
) -> list[dict]:
    """One metrics.jsonl row per seed for this iteration."""
    rows = []
    info = rec.info
    for s, seed in enumerate(rec.seeds):
        if config.ess_sampling and rec.prev_evaluations[s] >= config.max_evaluations:
            continue  # this seed's budget was spent: it stood still
        valid, ok, e = info.valid[s], rec.ok[s], rec.energies[s]
        not_kept = rec.not_kept[s] if rec.not_kept is not None else np.zeros_like(ok)
        finite_x = np.all(np.isfinite(rec.x[s]), axis=(-2, -1))
        be = np.asarray(info.buffer_energies[s])[np.asarray(info.buffer_valid[s])]
        train = _training_metrics(info.steps, s, config.steps_per_epoch, config.clip_norm)
        grad = {k: train.pop(k) for k in list(train) if k.startswith(("grad", "clipped"))}
        rows.append(
            {
                "iteration": rec.k,
                "seed": seed,
                "kT": float(info.kT[s]),
                "evaluations": int(rec.n_evaluations[s]),
                "n_sampled": int(rec.ok.shape[1]),
                "n_too_close": int((~ok & ~not_kept & finite_x).sum()),
                "n_not_kept": int(not_kept.sum()),
                "n_nonfinite_samples": int((~finite_x).sum()),
                "n_invalid_energy": int((ok & ~valid).sum()),  # NaN or below energy_floor
                "best_energy": float(rec.archive_best[s]),
                "iteration_best_energy": float(np.nanmin(e[valid])) if valid.any() else None,
                "buffer_energy_min": float(be.min()) if be.size else None,
                "buffer_energy_mean": float(be.mean()) if be.size else None,
                "buffer_energy_max": float(be.max()) if be.size else None,
                **train,
                "heat_capacity": _finite_or_none(float(info.heat_capacity[s])),
                "ess": _finite_or_none(float(info.ess[s])),
                "n_buffer": int(info.n_buffer[s]),
                **grad,
                "params_finite": bool(info.params_finite[s]),
                "lr_scale": float(info.lr_scale[s]),
                **_force_metrics(info.force_loss, s),
                "first_success_evaluation": int(first[s]) if first[s] >= 0 else None,
                "first_success_seconds": float(clock.first_success_s[s]) if first[s] >= 0 else None,
                "seconds_sampling": rec.seconds[0],
                "seconds_evaluating": rec.seconds[1],
                "seconds_training": rec.seconds[2],
                "seconds_total": float(clock.elapsed_s[s]),
            }
        )
    return rows
