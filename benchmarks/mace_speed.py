"""Energy + forces of a batch of Pt7/Pt(111) heptamer structures: our JAX MACE vs mace-torch.

    python benchmarks/mace_speed.py --batch 128 --repeats 3     # needs the mace extra

A random model of the MACE-MP-0 medium architecture at its full size (128x0e+128x1o,
radial MLP [64, 64, 64]; `tests/data/mace/make_fixtures.py`), converted with our
converter. Ours: jit(vmap(value_and_grad(mace_energy_fn(system)))) over the batch;
mace-torch: the same structures as one batched graph through the model with forces, on
the same CPU threads. Median over repeats after a warm-up call (ours compiles there);
checks that the two agree. `--chunk K` splits the batch into groups of K structures for
both (for memory).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # float64 available; float32 chosen per input

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from godiff_jax import pt111_heptamer  # noqa: E402
from godiff_jax.ase_interop import to_atoms  # noqa: E402
from godiff_jax.potentials.mace import mace_energy_fn  # noqa: E402
from godiff_jax.potentials.mace.convert import from_torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data" / "mace"))
from make_fixtures import build_model  # noqa: E402


def random_batch(system, batch: int, rng: np.random.Generator, min_d: float = 2.0):
    """[batch, 7, 3]: x/y uniform over the cell, z in the box, atoms >= min_d Å apart."""
    out = []
    while len(out) < batch:
        xy = rng.random((system.n_mobile, 2)) @ system.cell[:2, :2]
        z = rng.uniform(system.box_lo[2], system.box_hi[2], (system.n_mobile, 1))
        x = np.concatenate([xy, z], axis=-1)
        d = np.linalg.norm(x[:, None] - x[None], axis=-1) + 10 * np.eye(len(x))
        if d.min() >= min_d:
            out.append(x)
    return np.stack(out)


def torch_batches(model, system, xs, chunk: int, dtype: str):
    """mace-torch batched graphs (dicts) of the structures, `chunk` per graph."""
    from mace import data as mdata
    from mace.tools import torch_geometric, utils

    z_table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    graphs = []
    for x in xs:
        atoms = to_atoms(system, x)
        config = mdata.config_from_atoms(atoms)
        graphs.append(
            mdata.AtomicData.from_config(config, z_table=z_table, cutoff=float(model.r_max))
        )
    loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=chunk, shuffle=False)
    return [b.to_dict() for b in loader]


def time_torch(model, batches, repeats: int):
    def once():
        es, fs = [], []
        for b in batches:
            out = model(dict(b), compute_force=True)
            es.append(out["energy"].detach().double().numpy())
            fs.append(out["forces"].detach().double().numpy())
        return np.concatenate(es), np.concatenate(fs)

    once()  # warm-up
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = once()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def time_jax(fn, xs, chunk: int, repeats: int):
    def once():
        out = [fn(xs[i : i + chunk]) for i in range(0, len(xs), chunk)]
        jax.block_until_ready(out)
        return np.concatenate([np.asarray(e) for e, _ in out]), np.concatenate(
            [-np.asarray(g) for _, g in out]
        )

    t = time.perf_counter()
    once()  # warm-up: compiles
    compile_s = time.perf_counter() - t
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = once()
        times.append(time.perf_counter() - t)
    return statistics.median(times), compile_s, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--chunk", type=int, default=None, help="structures per call (default all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = p.parse_args()
    import torch

    chunk = args.chunk or args.batch
    torch_dtype = getattr(torch, args.dtype)
    system = pt111_heptamer()
    xs = random_batch(system, args.batch, np.random.default_rng(0))
    torch_model = build_model("medium")  # float64; converted in float64
    model = from_torch(torch_model)
    torch_model = torch_model.to(torch_dtype)
    torch.set_default_dtype(torch_dtype)
    threads = torch.get_num_threads()

    energy = mace_energy_fn(system, model)
    fn = jax.jit(jax.vmap(jax.value_and_grad(energy)))
    ours_s, compile_s, (e_ours, f_ours) = time_jax(
        fn, jnp.asarray(xs, getattr(jnp, args.dtype)), chunk, args.repeats
    )
    batches = torch_batches(torch_model, system, xs, chunk, args.dtype)
    torch_s, (e_torch, f_torch) = time_torch(torch_model, batches, args.repeats)
    f_torch = f_torch.reshape(len(xs), system.n_atoms, 3)[:, system.n_template :]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"{datetime.date.today()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads {threads}, commit {commit}"
    )
    print(
        f"MACE-MP-0 medium size (random weights), {args.batch} heptamer structures "
        f"({system.n_atoms} atoms), {args.dtype}, {chunk} per call"
    )
    print(
        f"ours (JAX):  {ours_s:8.3f} s per batch  (first call with compilation {compile_s:.1f} s)"
    )
    print(f"mace-torch:  {torch_s:8.3f} s per batch")
    print(f"ratio mace-torch / ours: {torch_s / ours_s:.2f}")
    print(
        f"agreement: max |dE| {np.max(np.abs(e_ours - e_torch)):.2e} eV, "
        f"max |dF| {np.max(np.abs(f_ours - f_torch)):.2e} eV/Å"
    )


if __name__ == "__main__":
    main()
