"""Pt adatom on stepped Pt with the embedded JAX EMT (paper section 3.1, Figure 1).

    python experiments/adatom.py --seeds 8         # the default settings, 8 seeds vmapped
    python experiments/adatom.py --preset paper    # the paper's settings
    python experiments/adatom.py --quick           # small preset
    python experiments/adatom.py --energy mace:mp0.mace  # a converted MACE model (README), in jit

Success: a generated structure within 0.1 eV (single point) of the EMT minimum, or with
the adatom within 0.3 Å of one of the two minimum sites per cell (DESIGN.md section 2).
"""

from godiff_jax import stepped_pt_adatom
from godiff_jax.analysis import success_fn
from godiff_jax.cli import run_experiment
from godiff_jax.config import DEFAULT_SETTINGS, PAPER_SETTINGS
from godiff_jax.evaluate import JaxEvaluator
from godiff_jax.potentials.emt import emt_energy_fn

PAPER = PAPER_SETTINGS["adatom"]  # the paper's settings, listed in godiff_jax/config.py
# 250 training steps at 2e-4 and 100 reverse steps, kT held at 0.02 eV for the last 5
# iterations, half of each iteration refined (config.py)
DEFAULT = DEFAULT_SETTINGS["adatom"]
QUICK = PAPER.replace(n_iterations=6, train_steps=500, n_reverse_steps=200)


def make_success(system):
    return success_fn("adatom", system)


if __name__ == "__main__":
    system = stepped_pt_adatom()
    run_experiment(
        system,
        DEFAULT,
        QUICK,
        paper=PAPER,
        evaluator=JaxEvaluator(emt_energy_fn(system)),
        make_success=make_success,
        description="GO-Diff: Pt adatom on stepped Pt, JAX EMT",
        builtin="adatom",
        default_workdir="runs/adatom",
    )
