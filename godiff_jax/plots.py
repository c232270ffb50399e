"""Figures of search quality, shared by the benchmark tables, `benchmarks/figures.py` and
run reports (`godiff report`).

- `best_energy_figure`: the paper's Figure 2 kind of curve, the best single-point energy
  above the known minimum (or the best energy itself) against the number of energy
  evaluations, a faint line per seed, the mean bold, and optionally a cross at each seed's
  first success.
- `success_fraction_figure`: the fraction of seeds that have succeeded against
  evaluations, a step curve per method (as `agox analysis` draws success curves).
- `adatom_figure`: the paper's Figure 1, the adatom positions of a run's samples over the
  relaxed energy landscape (a) and the energies per iteration (b), coloured by kT.

An arm is one method (or one run): `result_arm` makes one from a `benchmarks/quality.py`
(or `benchmarks/rss.py`) result file; both curve figures take the same arm dicts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path)
    fig.clf()
    _pyplot().close(fig)
    return path


def result_arm(result: dict, test: str = "strict") -> dict:
    """The arm dict of a quality result file (schema: benchmarks/results/README.md)."""
    curves = np.asarray(result["curves"], float)
    s = result["summary"]
    return {
        "curve_evaluations": s["curve_evaluations"],
        "curves": np.where(curves == -1.0, np.nan, curves),  # -1: no structure yet
        "successes": f"{s[f'successes_{test}']}/{s['n_seeds']}",
        "first_success": [r[f"first_success_{test}"] for r in result["rows"]],
        "rows": result["rows"],
        "budget": s["budget"],
    }


def best_energy_figure(
    arms: dict[str, dict],
    path: str | Path,
    title: str = "",
    seed_lines: bool = True,
    above_minimum: bool = True,
) -> Path:
    """arms: name -> {"curve_evaluations": [G], "curves": [S, G] eV, optional "successes"
    (a label such as "3/8"), optional "first_success": [S] evaluation or None}.

    Writes a PNG to `path` and returns it: thin lines per seed unless `seed_lines` is
    False, the mean over seeds bold, a cross at each seed's first success on its curve.
    `above_minimum`: the curves are energies above a known minimum (log axis floored at
    1 meV); otherwise the best energy itself (linear axis).
    """
    plt = _pyplot()
    floor = 1e-3 if above_minimum else -np.inf

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    crossed = False
    for i, (name, arm) in enumerate(arms.items()):
        c = colours[i % len(colours)]
        g = np.asarray(arm["curve_evaluations"], float)
        curves = np.maximum(np.asarray(arm["curves"], float), floor)
        for seed_curve in curves if seed_lines else []:
            ax.plot(g, seed_curve, color=c, alpha=0.25, lw=0.8)
        label = name if arm.get("successes") is None else f"{name} ({arm['successes']})"
        ax.plot(g, np.nanmean(curves, axis=0), color=c, lw=2.0, label=label)
        hits = arm.get("first_success")
        for seed_curve, hit in zip(
            curves, [None] * len(curves) if hits is None else hits, strict=True
        ):
            if hit is not None and g.size:
                ax.plot(hit, np.interp(hit, g, seed_curve), "x", color=c, ms=8, mew=2, zorder=5)
                crossed = True
    if crossed:  # one legend entry for all crosses, in black
        ax.plot([], [], "x", color="k", ms=8, mew=2, label="first success of a seed")
    if above_minimum:
        ax.set_yscale("log")
        ax.set_ylabel("best energy above the minimum (eV)")
    else:
        ax.set_ylabel("best energy (eV)")
    ax.set_xlabel("energy evaluations")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _save(fig, path)


def success_fraction(first_success, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Step points of the success curve: evaluations [0, each success in order, budget] and
    the fraction of seeds (None = never) that have succeeded by then; successes after
    `budget` do not count. Draw with `where="post"`."""
    n = len(first_success)
    hits = np.sort([e for e in first_success if e is not None and e <= budget])
    x = np.concatenate([[0], hits, [budget]])
    frac = np.concatenate([[0], np.arange(1, hits.size + 1), [hits.size]]) / max(n, 1)
    return x, frac


def success_fraction_figure(
    arms: dict[str, dict], path: str | Path, title: str = "", test: str = "strict"
) -> Path:
    """arms: name -> {"rows": per-seed rows with `first_success_{test}`, "budget": int}.

    Writes a PNG to `path` (one step curve per arm, each to its own budget) and returns it.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, arm in arms.items():
        rows = arm["rows"]
        x, frac = success_fraction([r[f"first_success_{test}"] for r in rows], arm["budget"])
        ax.step(
            x,
            frac,
            where="post",
            lw=2.0,
            label=f"{name} ({round(frac[-1] * len(rows))}/{len(rows)})",
        )
    ax.set_xlabel("energy evaluations")
    ax.set_ylabel(f"fraction of seeds succeeded ({test} test)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(left=0)
    ax.set_title(title or "success against energy evaluations")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def adatom_figure(
    landscape: dict,
    samples: dict,
    metrics: list[dict],
    path: str | Path,
    e_min: float,
    sites=None,
    title: str = "",
) -> Path:
    """Figure 1: (a) adatom positions over the relaxed energy landscape, (b) energies per
    iteration; both coloured by the iteration's kT (red hot, blue cold).

    landscape: {"frac" [nx, ny, 2] fractional x/y of the grid, "cell" [2, 2] Å (the first
    two cell vectors' x/y), "energy" [nx, ny] eV} (`report.adatom_landscape`); samples:
    {"xy" [N, 2] Å, "kT" [N] eV, "iteration" [N], "energy" [N] eV} of one seed; metrics:
    that seed's metrics.jsonl rows (iteration, kT, buffer_energy_min/mean/max); e_min:
    the energy the landscape and energies are shown above (eV); sites [S, 2]: minimum sites.
    """
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Polygon

    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12.0, 5.0), dpi=120, width_ratios=[1.25, 1.0])
    cell = np.asarray(landscape["cell"], float)

    # (a) the landscape on the periodic grid, padded by one wrapped row and column each
    # side so the filled contour reaches the cell's edges, clipped to the cell.
    frac = np.asarray(landscape["frac"], float)
    nx, ny = frac.shape[:2]
    fpad = np.stack(
        np.meshgrid(frac[:, 0, 0][[-1, *range(nx), 0]], frac[0, :, 1][[-1, *range(ny), 0]],
                    indexing="ij"),
        axis=-1,
    )  # fmt: skip
    fpad[0, :, 0] -= 1.0
    fpad[-1, :, 0] += 1.0
    fpad[:, 0, 1] -= 1.0
    fpad[:, -1, 1] += 1.0
    xy = fpad @ cell
    e = np.pad(np.asarray(landscape["energy"], float) - e_min, 1, mode="wrap")
    contour = ax.contourf(xy[..., 0], xy[..., 1], e, levels=24, cmap="Greys_r")
    outline = Polygon([[0, 0], cell[0], cell[0] + cell[1], cell[1]], closed=True, fill=False)
    ax.add_patch(outline)
    contour.set_clip_path(outline)
    cb = fig.colorbar(contour, ax=ax, pad=0.01)
    cb.set_label("relaxed energy above the minimum (eV)")

    points = np.asarray(samples["xy"], float)
    wrapped = (points @ np.linalg.inv(cell)) % 1.0 @ cell  # into the cell (periodic x/y)
    kT = np.asarray(samples["kT"], float)
    norm = LogNorm(vmin=kT.min(), vmax=kT.max())
    order = np.argsort(-kT, kind="stable")  # cold (late) samples drawn on top
    dots = ax.scatter(
        *wrapped[order].T, c=kT[order], cmap="coolwarm", norm=norm, s=16, edgecolors="k",
        linewidths=0.3, label="sampled adatom positions",
    )  # fmt: skip
    if sites is not None:
        s = np.asarray(sites, float)
        # hollow, so the samples that found the sites stay visible beneath
        ax.plot(
            *s[:, :2].T, "*", mfc="none", mec="gold", mew=1.8, ms=20, label="global minimum sites"
        )
    ax.set_aspect("equal")
    pad = 0.3
    ax.set_xlim(min(0, cell[1, 0]) - pad, max(cell[0, 0], cell[0, 0] + cell[1, 0]) + pad)
    ax.set_ylim(-pad, cell[1, 1] + pad)
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.set_title("(a) adatom positions over the relaxed EMT landscape")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)

    # (b) every evaluated energy per iteration (the buffer itself is not stored) and the
    # buffer's range and mean from the metrics.
    it = np.asarray(samples["iteration"])
    jitter = np.random.default_rng(0).uniform(-0.25, 0.25, it.size)  # spread the points
    floor = 1e-3
    bx.scatter(
        it + jitter, np.maximum(np.asarray(samples["energy"]) - e_min, floor), c=kT, cmap="coolwarm",
        norm=norm, s=10, edgecolors="none", alpha=0.8, label="evaluated structures",
    )  # fmt: skip
    m = sorted(metrics, key=lambda r: r["iteration"])
    mi = [r["iteration"] for r in m]
    lo, mean, hi = (
        np.maximum([r[f"buffer_energy_{k}"] - e_min for r in m], floor)
        for k in ("min", "mean", "max")
    )
    bx.fill_between(mi, lo, hi, color="0.5", alpha=0.25, label="buffer min to max")
    bx.plot(mi, mean, "k-", lw=1.5, label="buffer mean")
    bx.set_yscale("log")
    bx.set_xlabel("iteration")
    bx.set_ylabel("energy above the minimum (eV)")
    bx.set_title("(b) energies per iteration")
    bx.legend(fontsize=8, loc="upper right")
    bx.grid(alpha=0.3, which="both")
    cb = fig.colorbar(dots, ax=bx, pad=0.01)
    cb.set_label("kT of the iteration (eV)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
