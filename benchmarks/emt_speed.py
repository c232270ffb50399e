"""Energy + forces of a batch of Pt7/Pt(111) heptamer structures: JAX EMT vs ASE's EMT.

    python benchmarks/emt_speed.py --batch 128 --repeats 20

Times jit(vmap(value_and_grad(energy))) in float32 and float64 (median over repeats,
after a warm-up call that compiles) and ASE's EMT energy + forces on the same structures,
one after another; checks that they agree.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)  # float64 available; float32 chosen per input

import ase  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402

from godiff_jax import pt111_heptamer  # noqa: E402
from godiff_jax.potentials.emt import emt_energy_fn  # noqa: E402


def random_batch(system, batch: int, rng: np.random.Generator) -> np.ndarray:
    """[batch, n_mobile, 3]: x/y uniform over the cell, z uniform in the box."""
    shape = (batch, system.n_mobile)
    xy = rng.random((*shape, 2)) @ system.cell[:2, :2]
    z = rng.uniform(system.box_lo[2], system.box_hi[2], (*shape, 1))
    return np.concatenate([xy, z], axis=-1)


def time_jax(fn, x, repeats: int) -> tuple[float, tuple]:
    out = jax.block_until_ready(fn(x))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--ase-repeats", type=int, default=1, help="passes over the batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} "
        f"cpus={os.cpu_count()} jax={jax.__version__} backend={jax.default_backend()} "
        f"ase={ase.__version__}"
    )

    system = pt111_heptamer()
    batch = random_batch(system, args.batch, np.random.default_rng(args.seed))
    fn = jax.jit(jax.vmap(jax.value_and_grad(emt_energy_fn(system))))

    t32, (e32, g32) = time_jax(fn, jnp.asarray(batch, jnp.float32), args.repeats)
    t64, (e64, g64) = time_jax(fn, jnp.asarray(batch, jnp.float64), args.repeats)

    atoms = system.template_atoms() + ase.Atoms(
        numbers=system.mobile_numbers, positions=np.zeros((system.n_mobile, 3))
    )
    atoms.calc = EMT()
    ase_times = []
    e_ase = np.zeros(args.batch)
    f_ase = np.zeros(batch.shape)
    for _ in range(args.ase_repeats):
        start = time.perf_counter()
        for i, mobile in enumerate(batch):
            atoms.positions[system.n_template :] = mobile
            e_ase[i] = atoms.get_potential_energy()
            f_ase[i] = atoms.get_forces()[system.n_template :]
        ase_times.append(time.perf_counter() - start)
    t_ase = statistics.median(ase_times)

    err = {
        "f64 energy": np.abs(np.asarray(e64) - e_ase).max(),
        "f64 forces": np.abs(-np.asarray(g64) - f_ase).max(),
        "f32 energy (rel)": (np.abs(np.asarray(e32) - e_ase) / np.maximum(1, np.abs(e_ase))).max(),
        "f32 forces (rel)": (np.abs(-np.asarray(g32) - f_ase) / np.maximum(1, np.abs(f_ase))).max(),
    }
    print(f"system: {system.name}, {system.n_template} fixed + {system.n_mobile} mobile atoms")
    print(f"batch: {args.batch} structures; jax median of {args.repeats} after warm-up")
    print(
        f"JAX EMT float32: {t32 * 1e3:8.2f} ms/batch  ({t32 / args.batch * 1e6:7.1f} us/structure)"
    )
    print(
        f"JAX EMT float64: {t64 * 1e3:8.2f} ms/batch  ({t64 / args.batch * 1e6:7.1f} us/structure)"
    )
    print(
        f"ASE EMT        : {t_ase * 1e3:8.2f} ms/batch  ({t_ase / args.batch * 1e3:7.2f} ms/structure)"
    )
    print(f"ratio ASE / JAX: float32 {t_ase / t32:7.0f}x   float64 {t_ase / t64:7.0f}x")
    for name, value in err.items():
        print(f"max |JAX - ASE| {name}: {value:.2e}")
    ok = err["f64 energy"] < 1e-8 and err["f64 forces"] < 1e-8 and err["f32 energy (rel)"] < 1e-5
    print("agreement:", "OK" if ok else "MISMATCH")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
