"""Transfer (amortised optimisation): start a run from another run's trained score model.

The score model's parameters do not depend on the system (`model.ScoreModel`), so the
final parameters of one run (e.g. the adatom on stepped Pt) initialise the model of a run
on another system (the heptamer on Pt(111)); nothing is frozen and the optimizer starts
fresh. The force head is re-initialised unless asked to carry over.

Sources: a run directory (its latest checkpoint; the seed with the lowest energy found,
or the one asked for), a parameter file written by `export_params`, or the name of a
model shipped with the package (`SHIPPED`). A parameter file records `params_version`,
the version of the parameter tree; a file of another version is refused with the command
that regenerates it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from godiff_jax import checkpoint

# Bump when the score model's parameter tree changes (a new layer, renamed leaves), and
# regenerate the shipped models with the command in their metadata.
PARAMS_VERSION = 1
PARAMS_KIND = checkpoint.PARAMS_KIND
_PRETRAINED = Path(__file__).parent / "pretrained"
SHIPPED = {"adatom": _PRETRAINED / "adatom_stepped_pt.msgpack"}


class Pretrained(NamedTuple):
    params: Any  # score-model parameters (float32 pytree)
    force_head: Any  # force-head parameters, or None (re-initialised by the run)
    meta: dict  # where they came from


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def _run_arrays(run_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    path = run_dir / checkpoint.CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} has no {checkpoint.CHECKPOINT}: not a run directory")
    header, arrays = checkpoint.decode(path.read_bytes(), "run-state", str(path))
    return header["meta"], arrays


def _best_seed(arrays: dict[str, np.ndarray]) -> int:
    """Index of the seed whose archive holds the lowest valid energy."""
    e = np.where(arrays[".archive.valid"], arrays[".archive.energies"], np.inf)
    return int(np.argmin(e.min(axis=1)))


def _subtree(arrays: dict[str, np.ndarray], prefix: str, index: int) -> dict[str, np.ndarray]:
    """{leaf path below prefix: that seed's array}."""
    return {k[len(prefix) :]: v[index] for k, v in arrays.items() if k.startswith(prefix)}


def _nested(flat: dict[str, np.ndarray]) -> dict:
    """The nested dict of a parameter tree from its {"['a']['b']": array} leaves."""
    tree: dict = {}
    for path, value in flat.items():
        keys = re.findall(r"\['([^']*)'\]", path)
        node = tree
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return tree


def _from_run(run_dir: Path, seed: int | None) -> tuple[dict, dict, dict]:
    """(score arrays, force-head arrays, source) of one seed of a run's latest checkpoint."""
    meta, arrays = _run_arrays(run_dir)
    seeds = list(meta["seeds"])
    if seed is None:
        index = _best_seed(arrays)
    elif seed in seeds:
        index = seeds.index(seed)
    else:
        raise ValueError(f"{run_dir} holds seeds {seeds}, not seed {seed}")
    params = _subtree(arrays, ".train.params", index)
    head = _subtree(arrays, ".force_head", index)
    source = {"run": str(run_dir), "seed": seeds[index], "iteration": meta["iteration"]}
    return params, head, source


def export_params(run_dir: str | Path, out: str | Path, seed: int | None = None, **meta) -> dict:
    """Write one seed's score-model parameters of a run (default: its best seed) to `out`
    as a parameter file; `meta` (e.g. the command that made the run) is recorded with
    `params_version`, the commit and the run's config. Returns the metadata written."""
    run_dir = Path(run_dir)
    params, _, source = _from_run(run_dir, seed)
    config = run_dir / "config.json"
    info = {
        "params_version": PARAMS_VERSION,
        "commit": _commit(),
        "source": source,
        "config": config.read_text() if config.exists() else None,
        **meta,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save_params(Path(out), _nested(params), info)
    return info


def _check_version(meta: dict, source: str) -> None:
    version = meta.get("params_version")
    if version != PARAMS_VERSION:
        how = meta.get("command")
        raise checkpoint.CheckpointError(
            f"{source} holds score-model parameters of version {version}; this godiff_jax "
            f"uses version {PARAMS_VERSION}. Regenerate the file"
            + (f" with: {how}" if how else " from its run directory (transfer.export_params)")
        )


def load_pretrained(
    source: str | Path,
    params_template: Any,
    *,
    seed: int | None = None,
    force_head_template: Any | None = None,
) -> Pretrained:
    """Parameters to start a run from: `source` is a run directory, a parameter file or a
    name in `SHIPPED`. `params_template` is the shape of the new run's score-model
    parameters (`jax.eval_shape(model.init, key)`); every leaf is checked against it, and a
    misfit (another model size) names the leaf. With `force_head_template` the force head
    is carried over too (only a run directory with guidance on has one)."""
    path = SHIPPED.get(str(source), Path(source))
    if path.is_dir():
        params, head, origin = _from_run(path, seed)
        meta = {"source": origin}
    elif path.exists():
        header, params = checkpoint.decode(path.read_bytes(), PARAMS_KIND, str(path))
        meta = header["meta"]
        _check_version(meta, str(path))
        head = {}
    else:
        known = ", ".join(sorted(SHIPPED))
        raise FileNotFoundError(
            f"{source}: no such run directory or parameter file (shipped models: {known})"
        )
    restored = checkpoint.restore(params_template, params, str(path))
    carried = None
    if force_head_template is not None:
        if not head:
            raise ValueError(
                f"{source} has no force head to carry over (a run with guidance on has one)"
            )
        carried = checkpoint.restore(force_head_template, head, f"{path} (force head)")
    return Pretrained(restored, carried, meta)


def params_template(search) -> tuple[Any, Any]:
    """Shapes of a `GODiff`'s score-model and force-head parameters (None without guidance)."""
    key = jax.random.PRNGKey(0)
    head = None if search.force_head is None else jax.eval_shape(search.force_head.init, key)
    return jax.eval_shape(search.model.init, key), head
