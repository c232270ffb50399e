"""Expensive ASE calculators on a Dask cluster (`pip install 'godiff_jax[dask]'`).

`DaskEvaluator` fills the evaluator protocol of `godiff_jax.evaluate`: every structure of
an iteration goes out as one task (`client.map`), each worker builds the calculator once
(per worker thread) from a picklable factory, and results stream back as they finish
(`as_completed`), so that the run writes each to its database at once. A task that raises
is retried `retries` times; a task running past `time_limit` seconds (a hung DFT job) is
cancelled and its worker restarted. Either way the structure is then marked invalid with
the reason, and the iteration goes on. A worker that dies takes no finished result with it:
those are already on the host; the scheduler reruns the unfinished ones elsewhere.

Without a `client` or `address` a `LocalCluster` of `n_workers` processes (one thread
each: ASE calculators are not thread-safe) is started on first use and closed by `close()`.
On a SLURM or PBS cluster, start the workers with dask-jobqueue and pass its client:

    from dask_jobqueue import SLURMCluster
    from distributed import Client
    cluster = SLURMCluster(cores=8, memory="16GB", walltime="04:00:00", processes=1)
    cluster.scale(jobs=16)                      # 16 batch jobs, one calculator each
    evaluator = DaskEvaluator(make_calculator, client=Client(cluster), time_limit=3600)
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from godiff_jax.evaluate import Result, _finite, evaluate_host, structure_energy_forces
from godiff_jax.system import System

try:
    import distributed
except ImportError as err:  # pragma: no cover - the message is the point
    raise ImportError(
        "DaskEvaluator needs dask.distributed: pip install 'godiff_jax[dask]'"
    ) from err

# One calculator per (factory, worker thread), kept for the worker process's lifetime.
_CALCULATORS: dict[tuple[str, int], Any] = {}

# Future states after which a task's outcome is known ("lost" and "pending" are not).
_SETTLED = ("finished", "error", "cancelled")


def _calculator(token: str, make_calculator: Callable[[], Any]) -> Any:
    key = (token, threading.get_ident())
    if key not in _CALCULATORS:
        _CALCULATORS[key] = make_calculator()
    return _CALCULATORS[key]


def _task(make_calculator, token: str, topic: str, index: int, system: System, x) -> Result:
    """One structure on a worker. A calculator exception propagates (Dask retries it); a
    non-finite result is returned as invalid (deterministic: no retry)."""
    worker = distributed.get_worker()
    worker.log_event(topic, {"index": index, "start": time.time(), "worker": worker.address})
    e, f = structure_energy_forces(system, np.asarray(x), _calculator(token, make_calculator))
    reason = _finite(e, f)
    return Result(e, f, None if reason is None else f"{reason} (energy {e})")


class DaskEvaluator:
    """ASE calculator evaluations as Dask tasks, each result handed back as it finishes.

    `make_calculator`: a picklable zero-argument callable that builds the calculator (a
    class, or `functools.partial(Class, **kwargs)`), run once per worker thread.
    `client` (yours; not closed here) or `address` (a scheduler, e.g. "tcp://host:8786");
    with neither, a local cluster of `n_workers` processes. `retries`: further attempts of
    a task that raised. `time_limit`: seconds a task may run (from its start on a worker)
    before it is cancelled and its worker restarted; None: no limit.
    """

    def __init__(
        self,
        make_calculator: Callable[[], Any],
        *,
        client: distributed.Client | None = None,
        address: str | None = None,
        n_workers: int | None = None,
        retries: int = 1,
        time_limit: float | None = None,
        poll_s: float = 0.05,
    ):
        if not callable(make_calculator):
            raise TypeError(f"make_calculator must be callable, got {make_calculator!r}")
        if retries < 0 or (time_limit is not None and time_limit <= 0):
            raise ValueError(f"need retries >= 0 and time_limit > 0, got {retries}, {time_limit}")
        self.make_calculator = make_calculator
        made = getattr(make_calculator, "func", make_calculator)  # functools.partial
        self.name = getattr(made, "__name__", type(made).__name__)
        self.retries = int(retries)
        self.time_limit = time_limit
        self.poll_s = poll_s
        self._client = client
        self._address = address
        self._n_workers = n_workers
        self._owned: list = []  # what close() shuts down
        self._starting: set = set()  # replacement workers asked for, not yet up
        self._token = uuid.uuid4().hex

    @property
    def client(self) -> distributed.Client:
        if self._client is None:
            if self._address is not None:
                self._client = distributed.Client(self._address)
                self._owned = [self._client]
            else:
                cluster = distributed.LocalCluster(
                    n_workers=self._n_workers, threads_per_worker=1, processes=True
                )
                self._client = distributed.Client(cluster)
                self._owned = [self._client, cluster]
        return self._client

    def _restore_workers(self) -> None:
        # A LocalCluster gives up on a killed worker whose restart takes longer than
        # `distributed.deploy.lost-worker-timeout` (15 s; a loaded machine importing JAX
        # can take longer) and closes its nanny for good; ask for the full count again.
        # Each replacement gets a fresh name: the given-up nanny may have restarted its
        # worker just before it closed, and that worker can still hold the old name at
        # the scheduler, which refuses a second worker of the same name.
        cluster = self._owned[-1] if len(self._owned) == 2 else None
        if cluster is None:
            return
        # A replacement still starting is not in `cluster.workers` yet: leave it be.
        self._starting &= set(cluster.worker_spec) - set(cluster.workers)
        lost = set(cluster.worker_spec) - set(cluster.workers) - self._starting
        for name in lost:
            fresh = f"{name}-{uuid.uuid4().hex[:8]}"
            cluster.worker_spec[fresh] = cluster.worker_spec.pop(name)
            self._starting.add(fresh)
        if lost:
            cluster.scale(len(cluster.worker_spec))

    def close(self) -> None:
        for thing in self._owned:
            thing.close()
        if self._owned:
            self._client = None
        self._owned = []

    def __enter__(self) -> DaskEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, system, positions, valid, known=None, on_result=None):
        return evaluate_host(
            system, positions, valid, known, on_result, self._run, f"{self.name} on Dask"
        )

    def _run(self, system: System, xs: np.ndarray, todo: list[int], done) -> None:
        if not todo:
            return
        client = self.client
        self._restore_workers()
        topic = f"godiff-start-{uuid.uuid4().hex}"
        started: dict[int, tuple[float, str]] = {}

        def on_start(event) -> None:
            _, msg = event
            started[msg["index"]] = (msg["start"], msg["worker"])

        client.subscribe_topic(topic, on_start)
        futures = client.map(
            _task,
            [self.make_calculator] * len(todo),
            [self._token] * len(todo),
            [topic] * len(todo),
            todo,
            # The system goes with each task, not scattered: scattered data is lost for
            # good with the worker holding it, a task's arguments are not.
            [system] * len(todo),
            [xs[i] for i in todo],
            key=[f"godiff-{topic[13:]}-{i}" for i in todo],
            retries=self.retries,
            pure=False,
        )
        index = {f.key: i for f, i in zip(futures, todo, strict=True)}
        finished: set[int] = set()
        try:
            pending = distributed.as_completed(futures)
            while not pending.is_empty() or len(finished) < len(todo):
                for fut in pending.next_batch(block=False) if pending.has_ready() else ():
                    i = index[fut.key]
                    if i in finished:
                        continue
                    if fut.status not in _SETTLED:
                        # Its result died with a worker after it was queued here; the
                        # scheduler reruns it, so wait for it again.
                        pending.add(fut)
                        continue
                    finished.add(i)
                    done(i, self._result(fut, system))
                self._cancel_overdue(client, futures, index, started, finished, done, system)
                if len(finished) < len(todo):
                    time.sleep(self.poll_s)
        finally:
            client.unsubscribe_topic(topic)
            client.cancel([f for f in futures if not f.done()])

    def _result(self, fut, system: System) -> Result:
        try:
            # A result lost with its worker in the meantime is recomputed: this waits.
            return fut.result()
        except BaseException as raised:  # the task's own exception, after its retries
            err = raised
        n = self.retries + 1
        reason = f"{type(err).__name__}: {err} (after {n} attempt{'s' * (n > 1)})"
        return Result(np.nan, np.zeros((system.n_mobile, 3)), reason)

    def _cancel_overdue(self, client, futures, index, started, finished, done, system) -> None:
        if self.time_limit is None:
            return
        now = time.time()
        for fut in futures:
            i = index[fut.key]
            if i in finished or i not in started or fut.done():
                continue
            t0, worker = started[i]
            if now - t0 > self.time_limit:
                fut.cancel()
                finished.add(i)
                reason = f"cancelled: ran past the time limit of {self.time_limit:g} s on {worker}"
                done(i, Result(np.nan, np.zeros((system.n_mobile, 3)), reason))
                # A cancelled task keeps running in its worker's thread: restart the worker
                # so that the hung calculation does not hold it.
                try:
                    client.restart_workers([worker], raise_for_error=False)
                except Exception:  # the scheduler may have lost the worker already
                    pass
