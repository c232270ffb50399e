"""Wall time of one batch through the Dask evaluator with 1, 2, 4 ... workers.

    python benchmarks/dask_scaling.py --sleep 0.5 --structures 32 --workers 1 2 4
    python benchmarks/dask_scaling.py --calculator sevennet --structures 16 --workers 1 2

`--sleep S`: ASE's EMT plus a fixed S-second sleep per structure, a calculator of known
cost. The ideal batch time is the serial time (the same calculator in this process, no Dask)
divided by the workers; what lies above it, per task, is Dask's overhead. `--calculator sevennet`: SevenNet-0 (in an environment with
`godiff_jax[sevennet,dask]`), each worker with cores/workers threads. The heptamer's
structures come from the prior (random in its box), the same for every worker count. Each
row is the median of `--repeats` batches after one warm-up batch (workers import and build
their calculator there).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time

import jax
import numpy as np
from ase.calculators.emt import EMT

from godiff_jax import pt111_heptamer
from godiff_jax.dask_evaluator import DaskEvaluator
from godiff_jax.evaluate import AseEvaluator
from godiff_jax.sde import sample_prior


class SleepyEMT(EMT):
    """EMT plus a fixed sleep: the cost of an expensive calculator without its CPU load."""

    def __init__(self, sleep_s=0.5, **kwargs):
        super().__init__(**kwargs)
        self.sleep_s = float(sleep_s)

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        time.sleep(self.sleep_s)
        super().calculate(atoms, properties, system_changes or [])


def sevennet():
    from sevenn.calculator import SevenNetCalculator

    return SevenNetCalculator(model="7net-0", device="cpu")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sleep", type=float, default=0.5)
    p.add_argument("--calculator", choices=["sleepy", "sevennet"], default="sleepy")
    p.add_argument("--structures", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args()
    import distributed

    system = pt111_heptamer()
    x = np.asarray(sample_prior(jax.random.PRNGKey(0), system, args.structures), float)
    valid = np.ones(len(x), bool)
    make = functools.partial(SleepyEMT, args.sleep) if args.calculator == "sleepy" else sevennet
    cores = os.cpu_count() or 1
    with AseEvaluator(make(), n_workers=1) as serial:
        serial(system, x[:2], valid[:2])  # warm-up
        t0 = time.perf_counter()
        serial(system, x, valid)
        serial_s = time.perf_counter() - t0
    print(f"serial, in this process: {serial_s:.2f} s ({serial_s / len(x) * 1e3:.0f} ms each)")
    rows = []
    print(f"{args.calculator}, {args.structures} heptamer structures per batch, {cores} cores")
    print("workers  threads  median_s  min_s  ideal_s  overhead_per_task_ms")
    for w in args.workers:
        threads = max(1, cores // w)
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        with (
            distributed.LocalCluster(
                n_workers=w, threads_per_worker=1, processes=True, dashboard_address=None, env=env
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            ev = DaskEvaluator(make, client=client)
            ev(system, x, valid)  # warm-up: imports, calculators built
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = ev(system, x, valid)
                times.append(time.perf_counter() - t0)
            assert out.valid.all(), out.reasons
        med = statistics.median(times)
        ideal = serial_s / w
        over = (med - ideal) * w / args.structures * 1e3
        rows.append(
            dict(workers=w, threads=threads, median_s=med, min_s=min(times), ideal_s=ideal,
                 overhead_per_task_ms=over, energies=out.energies.tolist())
        )  # fmt: skip
        print(f"{w:7d}  {threads:7d}  {med:8.2f}  {min(times):5.2f}  {ideal:7.2f}  {over:20.1f}")
    if args.json:
        meta = dict(
            machine=platform.processor() or platform.machine(), cores=cores, args=vars(args)
        )
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
