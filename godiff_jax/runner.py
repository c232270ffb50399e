"""The host loop: run (or resume) GO-Diff for one or more seeds as one compiled program.

Per iteration: the jitted sample phase (all seeds vmapped) -> the evaluator (inside the
same kind of jitted phase for a `JaxEvaluator`, on the host for any other) -> the jitted
update phase -> records (structures.db, metrics.jsonl, first successes) -> checkpoint.

Nothing evaluated is lost: a host evaluator's results go to structures.db one by one as
they arrive; after a crash, resuming samples the interrupted iteration again (the same
key, so the same structures) and hands the results already in the database back to the
evaluator, which does not recompute them (failed ones keep their reason and are not
retried). A JAX evaluator's batch is recomputed instead: it is exact and cheap. The end of
each iteration rewrites its rows complete (weights, validity) in one transaction.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from godiff_jax import checkpoint, io, records, sharding
from godiff_jax.config import SearchConfig
from godiff_jax.evaluate import Evaluator, JaxEvaluator, Result
from godiff_jax.records import IterationRecord, RunClock
from godiff_jax.search import GODiff, RunState, SuccessFn
from godiff_jax.sharding import NO_LAYOUT, Layout
from godiff_jax.system import System


def _over_seeds(fn: Callable, n_seeds: int, in_axes: tuple, seed_batch: int) -> Callable:
    """One jitted program applying fn to every seed (the leading axis of in_axes=0 args).

    `seed_batch` seeds at a time are vmapped together (`lax.map(..., batch_size)`);
    seed_batch >= n_seeds is a plain vmap. One seed squeezes the axis instead: XLA CPU ran
    a size-1 vmapped training scan ~2x slower.
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
def compiled_phases(
    system: System,
    config: SearchConfig,
    evaluator: JaxEvaluator | None,
    n_seeds: int = 1,
    seed_batch: int | None = None,
    layout: Layout = NO_LAYOUT,
):
    """(GODiff, sample, evaluate or None, keep, update) jitted over a leading seed axis;
    cached so that repeated runs do not recompile. `layout` spreads seeds or samples over
    devices."""
    search = GODiff(system, config, sample_sharding=layout.sample_axis())
    # Default: all seeds vmapped (8 seeds train in 0.53x the time of 8 runs on the 2-core
    # CPU, RESULTS.md section 7); fewer loop over groups, for memory.
    sb = n_seeds if seed_batch is None else max(1, seed_batch)
    sample_fn = _over_seeds(search.sample, n_seeds, (0,), sb)
    eval_fn = None if evaluator is None else _over_seeds(evaluator.batch, n_seeds, (0,), sb)
    keep_fn = _over_seeds(search.keep, n_seeds, (0, 0, 0), sb)
    update_fn = _over_seeds(search.update, n_seeds, (0, 0, 0, 0, 0), sb)
    return search, sample_fn, eval_fn, keep_fn, update_fn


def _clock_from_old_state(arrays: dict, meta: dict) -> tuple[dict, dict]:
    """Checkpoints written while the wall clock lived in the RunState: move it to meta."""
    if ".elapsed_s" in arrays and "clock" not in meta:
        first = arrays.pop(".first_success_s")
        meta = dict(meta)
        meta["clock"] = RunClock(np.asarray(arrays.pop(".elapsed_s")), first).to_meta()
    return arrays, meta


def _start(search: GODiff, workdir: Path, seeds: list[int], init_params, init_force_head):
    """(state, clock, first iteration): resumed from the checkpoint, or fresh."""
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    key = jax.random.PRNGKey(0)
    if init_params is not None:
        init_params = checkpoint.check_params(init_params, jax.eval_shape(search.model.init, key))
    if init_force_head is not None:
        if search.force_head is None:
            raise ValueError("init_force_head given, but guidance is off (set guidance.ffg)")
        init_force_head = checkpoint.check_params(
            init_force_head, jax.eval_shape(search.force_head.init, key), "init_force_head"
        )
    init = jax.jit(jax.vmap(lambda k: search.init_state(k, init_params, init_force_head)))
    saved = checkpoint.load_checkpoint(
        workdir, jax.eval_shape(init, keys), upgrade=_clock_from_old_state
    )
    if saved is None:
        return init(keys), RunClock.start(len(seeds)), 0
    saved_state, meta = saved
    if list(meta["seeds"]) != seeds:
        raise ValueError(f"{workdir} holds seeds {meta['seeds']}, asked for {seeds}")
    start = int(meta["iteration"])
    io.truncate_outputs(workdir, start)
    state = jax.tree_util.tree_map(jnp.asarray, saved_state)
    return state, RunClock.from_meta(meta, len(seeds)), start


class _HostBatch(NamedTuple):
    """What the host evaluation of one iteration needs to name and write each result."""

    workdir: Path
    system: System
    k: int
    seeds: list[int]
    prev_evaluations: np.ndarray  # [S]
    known: dict  # {seed: {index: (energy, forces, reason)}} already in the database


def _evaluate_on_host(evaluator: Evaluator, batch: _HostBatch, x, ok):
    """Energies [S, N], forces [S, N, M, 3] (NaN: not evaluated or failed) and reasons of
    every seed's batch; each new result is written to the database as it arrives.

    All seeds' structures go to the evaluator as one batch, so that a pool or cluster is
    kept busy across seeds.
    """
    xs, oks = np.asarray(x), np.asarray(ok)
    n_seeds, n = oks.shape
    order = batch.prev_evaluations[:, None] + np.cumsum(oks, axis=1)
    known = {
        s * n + i: Result(*r)
        for s, seed in enumerate(batch.seeds)
        for i, r in batch.known.get(seed, {}).items()
        if oks[s][i]
    }

    def write(j: int, r: Result) -> None:
        s, i = divmod(j, n)
        keys = {"iteration": batch.k, "seed": batch.seeds[s], "index": i}
        keys["evaluation"] = int(order[s, i])
        if r.reason is not None:
            keys["reason"] = r.reason
        io.write_evaluation(batch.workdir, batch.system, xs[s, i], r.energy, r.forces, keys)

    flat = xs.reshape(n_seeds * n, *xs.shape[2:])
    out = evaluator(batch.system, flat, oks.reshape(-1), known=known, on_result=write)
    e = np.where(out.valid, out.energies, np.nan).reshape(n_seeds, n)
    f = out.forces.reshape(xs.shape)
    reasons = [tuple(out.reasons[s * n : (s + 1) * n]) for s in range(n_seeds)]
    return jnp.asarray(e, jnp.float32), jnp.asarray(f, jnp.float32), reasons


def _evaluate_chunks(evaluator: Evaluator, batch: _HostBatch, x, ok, keep, chunk: int):
    """ESS-driven sampling on the host: chunk after chunk of every seed that still needs
    one (`keep` on the energies so far), so that no structure past the ESS target is
    computed. Returns what `_evaluate_on_host` does, NaN for the structures not reached."""
    oks = np.asarray(ok)
    n_seeds, n = oks.shape
    e = np.full((n_seeds, n), np.nan, np.float32)
    f = np.full((*oks.shape, *np.shape(x)[2:]), np.nan, np.float32)
    reasons = [[None] * n for _ in range(n_seeds)]
    done = np.zeros(n_seeds, np.int64)
    for start in range(0, n, chunk):
        wanted = np.asarray(keep(jnp.asarray(e), ok))
        mask = np.zeros_like(oks)
        mask[:, start : start + chunk] = wanted[:, start : start + chunk]
        if not mask.any():
            break
        part = batch._replace(prev_evaluations=batch.prev_evaluations + done)
        e_c, f_c, r_c = _evaluate_on_host(evaluator, part, x, jnp.asarray(mask))
        e = np.where(mask, np.asarray(e_c), e)
        f = np.where(mask[..., None, None], np.asarray(f_c), f)
        for s_, i in zip(*np.nonzero(mask), strict=True):
            reasons[s_][i] = r_c[s_][i]
        done += mask.sum(axis=1)
    return jnp.asarray(e), jnp.asarray(f), [tuple(r) for r in reasons]


def _archive_best(state: RunState) -> np.ndarray:
    e = np.where(np.asarray(state.archive.valid), np.asarray(state.archive.energies), np.nan)
    ok = np.isfinite(e).any(axis=1)
    return np.where(ok, np.nanmin(np.where(ok[:, None], e, 0.0), axis=1), np.nan)


def run(
    system: System,
    config: SearchConfig,
    workdir: str | Path,
    *,
    evaluator: Evaluator,
    seeds: int | list[int] = 0,
    success_fn: SuccessFn | None = None,
    init_params: object | None = None,
    init_force_head: object | None = None,
    max_iterations: int | None = None,
    progress: bool = True,
    seed_batch: int | None = None,
    devices: list | None = None,
) -> RunState:
    """Run (or resume) GO-Diff for one or more seeds as one compiled program.

    `evaluator` (`godiff_jax.evaluate`) gives the energies: a `JaxEvaluator` runs inside
    the jitted program, any other (e.g. `AseEvaluator`) on the host between the phases.
    `workdir` gets config.json, checkpoint.msgpack (after every iteration, the one before
    kept as checkpoint.prev.msgpack), structures.db (ASE database) and metrics.jsonl;
    running again on the same directory resumes where it stopped. `max_iterations` stops
    early (the run can be resumed later). `init_params` (score model) and `init_force_head`
    start a fresh run from trained parameters (`godiff_jax.transfer`), with a fresh
    optimizer; a resumed run ignores them. `seed_batch` seeds are vmapped together inside
    each phase (default: all of them; fewer loops over groups, for memory); each seed's
    results are those of a separate run with that seed up to float rounding (another XLA
    program, which a long search amplifies). `devices` (default: every local
    device) share the work: the seeds, or each seed's samples (`godiff_jax.sharding`).
    Returns the final RunState (leading seed axis).
    """
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    io.write_config(workdir, config)
    in_jit = evaluator if isinstance(evaluator, JaxEvaluator) else None
    vmapped = seed_batch is None or seed_batch >= len(seeds)
    layout = sharding.plan(len(seeds), config.sampler.n_samples, devices) if vmapped else NO_LAYOUT
    search, sample_fn, eval_fn, keep_fn, update_fn = compiled_phases(
        system, config, in_jit, len(seeds), seed_batch, layout
    )
    state, clock, start = _start(search, workdir, seeds, init_params, init_force_head)
    state = sharding.place(state, layout)
    stop = (
        config.n_iterations if max_iterations is None else min(config.n_iterations, max_iterations)
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.n_iterations, initial=start, desc=system.name, unit="it")
    for k in range(start, stop):
        t0 = time.perf_counter()
        x, ok = jax.block_until_ready(sample_fn(state))
        t1 = time.perf_counter()
        prev = np.asarray(state.n_evaluations)
        reasons = None
        if eval_fn is not None:
            e, f = jax.block_until_ready(eval_fn(x))
        else:
            known = io.read_evaluations(workdir, system, k) if k == start else {}
            host = _HostBatch(workdir, system, k, seeds, prev, known)
            if config.ess_sampling:
                keep = functools.partial(keep_fn, state)
                chunk = config.sampler.ess_chunk
                e, f, reasons = _evaluate_chunks(evaluator, host, x, ok, keep, chunk)
            else:
                e, f, reasons = _evaluate_on_host(evaluator, host, x, ok)
        kept = keep_fn(state, e, ok) if config.ess_sampling else ok
        t2 = time.perf_counter()
        state, info = jax.block_until_ready(update_fn(state, x, e, f, kept))
        seconds = (t1 - t0, t2 - t1, time.perf_counter() - t2)
        rec = IterationRecord(
            k=k,
            seeds=seeds,
            x=np.asarray(x),
            ok=np.asarray(kept),
            energies=np.asarray(e),
            forces=np.asarray(f),
            info=jax.tree_util.tree_map(np.asarray, info),
            prev_evaluations=prev,
            n_evaluations=np.asarray(state.n_evaluations),
            archive_best=_archive_best(state),
            seconds=seconds,
            reasons=reasons,
            not_kept=np.asarray(ok & ~kept) if config.ess_sampling else None,
        )
        state, clock = _record(workdir, system, config, rec, state, clock, success_fn)
        meta = {"seeds": seeds, "iteration": k + 1, "clock": clock.to_meta()}
        checkpoint.save_checkpoint(workdir, state, meta)
        if bar is not None:
            kT = float(np.nanmean(rec.info.kT))
            bar.set_postfix(kT=f"{kT:.3g}", best=f"{np.nanmin(rec.archive_best):.4f}")
            bar.update(1)
        if config.ess_sampling and np.all(
            np.asarray(state.n_evaluations) >= config.max_evaluations
        ):
            break  # every seed has spent its budget
    if bar is not None:
        bar.close()
    return state


def _record(workdir, system, config, rec, state, clock, success_fn):
    """Database rows, first successes, metrics rows and warnings of one iteration."""
    clock = clock._replace(elapsed_s=clock.elapsed_s + sum(rec.seconds))
    records.write_structures(workdir, system, rec)
    first, clock = records.first_successes(rec, success_fn, np.asarray(state.first_success), clock)
    for line in records.warnings_for(rec):
        print(line)
    io.append_metrics(workdir, records.metrics_rows(rec, first, clock, config))
    # On the old counters' devices: another input sharding would compile the phases again.
    first = jax.device_put(np.asarray(first, np.int32), state.first_success.sharding)
    return state._replace(first_success=first), clock
