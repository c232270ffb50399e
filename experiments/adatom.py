"""Pt adatom on stepped Pt with the embedded JAX EMT (paper section 3.1, Figure 1).

    python experiments/adatom.py --seeds 8         # paper settings, 8 seeds vmapped
    python experiments/adatom.py --quick           # small preset

Success: a generated structure within 0.1 eV (single point) of the EMT minimum, or with
the adatom within 0.3 Å of one of the two minimum sites per cell (DESIGN.md section 2).
"""

from godiff_jax import stepped_pt_adatom
from godiff_jax.analysis import adatom_success
from godiff_jax.cli import run_experiment
from godiff_jax.config import make_config
from godiff_jax.evaluate import JaxEvaluator
from godiff_jax.potentials.emt import emt_energy_fn

# ---- hyperparameters (the paper's / reference script's adatom settings) ------------
PAPER = make_config(
    n_iterations=10,  # kT annealed over 10 iterations
    n_samples=32,  # structures evaluated per iteration (320 in all)
    buffer_size=16,
    batch_size=8,
    train_steps=2000,  # 1000 epochs over the 16-structure buffer
    kT_start=5.0,  # eV
    kT_end=0.02,  # eV
    n_reverse_steps=500,
    t_end=0.005,
    min_distance=1.0,  # Å
    learning_rate=1e-4,
    weight_decay=0.01,
    clip_norm=10.0,
    plateau_factor=0.95,
    plateau_patience=100,
    features=64,
    n_blocks=4,
    n_rbf=30,
    cutoff=6.0,
)
QUICK = PAPER.replace(n_iterations=6, train_steps=500, n_reverse_steps=200)


def make_success(system):
    def success(positions, energies, valid):
        return adatom_success(system, positions, energies) & valid

    return success


if __name__ == "__main__":
    system = stepped_pt_adatom()
    run_experiment(
        system,
        PAPER,
        QUICK,
        evaluator=JaxEvaluator(emt_energy_fn(system)),
        make_success=make_success,
        description="GO-Diff: Pt adatom on stepped Pt, JAX EMT",
        default_workdir="runs/adatom",
    )
