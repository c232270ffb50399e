"""What a trained heptamer model generates now: fresh samples of one seed's final model.

    python benchmarks/resample.py RUN_DIR --seed 7 --steps 100 300 [--samples 128]

Loads the seed's score model from a finished run directory, draws `--samples` structures
with each number of reverse steps (same key, the run's other sampler settings) and prints
the single-point EMT energies above the minimum and how many have the wheel bond graph.
Separates the reverse discretisation from the learned distribution as the cause of loose
samples (RESULTS section 45).
"""

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from godiff_jax import pt111_heptamer
from godiff_jax.analysis import HEPTAMER_EMT_MINIMUM, is_wheel_graph, mobile_bond_graph
from godiff_jax.config import from_dict
from godiff_jax.geometry import min_distance
from godiff_jax.potentials.emt import emt_energy_fn
from godiff_jax.sampler import reverse_sample
from godiff_jax.search import GODiff
from godiff_jax.transfer import load_pretrained, params_template


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run_dir", type=Path)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--steps", type=int, nargs="+", default=[100, 300])
    p.add_argument("--samples", type=int, default=128)
    args = p.parse_args()
    system = pt111_heptamer()
    config = from_dict(json.loads((args.run_dir / "config.json").read_text()))
    search = GODiff(system, config)
    params = load_pretrained(args.run_dir, params_template(search)[0], seed=args.seed).params
    ctx = search.model.context(params)
    energy = jax.jit(jax.vmap(emt_energy_fn(system)))
    wheel = jax.jit(jax.vmap(lambda x: is_wheel_graph(mobile_bond_graph(system, x))))
    for steps in args.steps:
        x = reverse_sample(
            jax.random.PRNGKey(11),
            lambda x, t: search.model.apply(params, ctx, x, t),
            system,
            args.samples,
            n_steps=steps,
            t_end=config.sampler.t_end,
            sde=config.sde,
        )
        ok = np.asarray(jax.vmap(lambda xi: min_distance(system, xi))(x)) >= config.min_distance
        e = np.asarray(energy(x))[ok] - HEPTAMER_EMT_MINIMUM
        n_wheel = int(np.sum(np.asarray(wheel(x)) & ok))
        print(
            f"{steps} reverse steps: {ok.sum()} valid, single point above min: lowest "
            f"{e.min():+.2f} eV, 10 % {np.quantile(e, 0.1):+.2f}, median {np.median(e):+.2f}; "
            f"wheel graphs {n_wheel}"
        )


if __name__ == "__main__":
    main()
