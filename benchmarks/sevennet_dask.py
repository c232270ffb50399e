"""The heptamer with SevenNet-0 through Dask, end to end: wall time per iteration with 1 and
2 workers, and the lowest structures' SevenNet-0 energies next to EMT's ordering of them.

    pip install -e '.[sevennet,dask]'        # its own environment (torch==2.13.0, CPU)
    python benchmarks/sevennet_dask.py experiments/configs/heptamer_sevennet.toml \
        --workers 1 2 --iterations 3 --out benchmarks/results/cpu_sevennet_dask.json

The run's settings are the TOML's (its [energy.dask] n_workers is replaced per row). The
model-aware success test (the island relaxed with SevenNet-0, `model_success`) is found
once, before the timed runs. Each worker count runs in its own workdir under --workdir.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import ase.db
import jax
import numpy as np

from godiff_jax import io
from godiff_jax.potentials.emt import emt_energy_fn
from godiff_jax.run_config import load_run, make_evaluator, success_test
from godiff_jax.runner import run


def _ranks(v: np.ndarray) -> np.ndarray:
    r = np.empty(len(v))
    r[np.argsort(v)] = np.arange(len(v))
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--workdir", default="runs/sevennet_dask")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    spec = load_run(args.config)
    t0 = time.perf_counter()
    success = success_test(spec)
    minimum_s = time.perf_counter() - t0
    print(f"model minimum found in {minimum_s:.0f} s")
    rows = []
    for w in args.workers:
        energy = dict(spec.energy, dask=dict(spec.energy.get("dask", {}), n_workers=w))
        one = dataclasses.replace(spec, energy=energy)
        workdir = Path(args.workdir) / f"workers{w}"
        evaluator = make_evaluator(one)
        try:
            run(
                spec.system,
                spec.config,
                workdir,
                evaluator=evaluator,
                seeds=spec.seeds,
                success_fn=success,
                max_iterations=args.iterations,
                progress=False,
            )
        finally:
            evaluator.close()
        for m in io.read_metrics(workdir):
            keys = ("iteration", "seconds_sampling", "seconds_evaluating", "seconds_training")
            row = {k: m[k] for k in keys}
            rows.append(dict(workers=w, n_evaluated=m["n_sampled"] - m["n_too_close"], **row))
            print(
                f"workers {w}  iteration {m['iteration']}  sampling {m['seconds_sampling']:.1f} s"
                f"  evaluating {m['seconds_evaluating']:.1f} s  training "
                f"{m['seconds_training']:.1f} s  ({rows[-1]['n_evaluated']} structures)"
            )
    # The lowest structures by SevenNet-0 (last workdir) with their EMT energies.
    with ase.db.connect(workdir / "structures.db") as db:
        got = [
            (r.energy, r.toatoms().positions[spec.system.n_template :]) for r in db.select(valid=1)
        ]
    e7 = np.array([g[0] for g in got])
    xs = np.stack([g[1] for g in got])
    emt = emt_energy_fn(spec.system)
    e_emt = np.asarray(jax.jit(jax.vmap(emt))(xs))
    order = np.argsort(e7)
    r7, remt = _ranks(e7), _ranks(e_emt)
    spearman = float(np.corrcoef(r7, remt)[0, 1])
    print(
        f"\n{len(e7)} valid structures; Spearman rank correlation SevenNet-0 vs EMT: {spearman:.3f}"
    )
    print("rank_7net  E_7net_eV  E_emt_eV  rank_emt")
    lowest = []
    for i in order[:10]:
        lowest.append(dict(e_sevennet=float(e7[i]), e_emt=float(e_emt[i]), rank_emt=int(remt[i])))
        print(f"{int(r7[i]):9d}  {e7[i]:9.3f}  {e_emt[i]:8.3f}  {int(remt[i]):8d}")
    if args.out:
        meta = dict(machine=platform.machine(), config=args.config, minimum_s=minimum_s)
        out = dict(meta=meta, iterations=rows, spearman=spearman, lowest=lowest, n=len(e7))
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
