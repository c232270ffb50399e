"""Pt7 heptamer on Pt(111) started from the adatom model (Table 1 "GO-Diff + Transfer").

    python experiments/heptamer_transfer.py --seeds 8          # paper settings, 8 seeds
    python experiments/heptamer_transfer.py --init-params RUN  # from another run or file

Amortised optimisation: the score model starts from the one trained on the Pt adatom on
stepped Pt (shipped with the package, `godiff_jax/pretrained/`; its metadata has the
command that made it), with a fresh optimizer, and anneals kT 3.0 -> 0.02 eV over 20
iterations of 64 samples (1,280 evaluations) and 16,000 training steps each.
"""

from heptamer import PAPER as PLAIN
from heptamer import QUICK, main

PAPER = PLAIN.replace(kT_start=3.0, n_samples=64, train_steps=16000)

# The paper's transfer settings are its default too (the fast variant is --quick).
if __name__ == "__main__":
    main(
        PAPER,
        QUICK,
        paper=PAPER,
        description="GO-Diff + transfer from the adatom model: Pt7 heptamer on Pt(111), JAX EMT",
        default_workdir="runs/heptamer_transfer",
        init="adatom",
    )
