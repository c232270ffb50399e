"""Figures of search quality, shared by the benchmark tables and run reports.

`best_energy_figure` draws the paper's Figure 2 kind of curve: the best single-point
energy above the known minimum against the number of energy evaluations, one thin line
per seed and the mean over seeds, for one or more arms.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def best_energy_figure(
    arms: dict[str, dict], path: str | Path, title: str = "", seed_lines: bool = True
) -> Path:
    """arms: name -> {"curve_evaluations": [G], "curves": [S, G] eV, optional "successes"}.

    Writes a PNG to `path` (log energy axis, floored at 1 meV; thin lines per seed unless
    `seed_lines` is False) and returns the path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, arm) in enumerate(arms.items()):
        c = colours[i % len(colours)]
        g = np.asarray(arm["curve_evaluations"])
        curves = np.asarray(arm["curves"], float)
        for seed_curve in curves if seed_lines else []:
            ax.plot(g, np.maximum(seed_curve, 1e-3), color=c, alpha=0.25, lw=0.8)
        label = name if arm.get("successes") is None else f"{name} ({arm['successes']})"
        mean = np.maximum(np.nanmean(curves, axis=0), 1e-3)
        ax.plot(g, mean, color=c, lw=2.0, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("energy evaluations")
    ax.set_ylabel("best energy above the minimum (eV)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
