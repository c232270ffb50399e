"""Checkpoints and parameter files that hold only arrays and plain metadata.

Format: Flax's msgpack serialization of a flat {tree path: array} mapping, inside a small
container (a magic line, a JSON header with the format and package versions, the payload
length and its SHA-256). Msgpack rather than Orbax: a run state is a few MB written once
per iteration into one file, and msgpack does that in milliseconds with no extra
dependency, no directory layout and no background threads; Orbax's strengths (sharded
and asynchronous saves of large models) do not apply here. Nothing here unpickles: a
pickle checkpoint from an older version is refused, and `python -m godiff_jax.legacy
RUN_DIR --trust-pickle` converts one on the user's word.

Reading a file restores into a template pytree (a fresh state of the same run), so every
leaf is checked by path, shape and dtype, and a mismatch names the leaf.

The latest checkpoint is verified after it is written (read back, hash checked) before it
replaces the previous one, which is kept as `checkpoint.prev.msgpack`; a truncated or
corrupt latest file falls back to the previous one with a warning.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

try:
    __version__ = importlib.metadata.version("godiff_jax")
except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
    __version__ = "unknown"

MAGIC = b"GODIFF-JAX ARRAYS\n"
FORMAT_VERSION = 1
CHECKPOINT = "checkpoint.msgpack"
PREVIOUS = "checkpoint.prev.msgpack"
LEGACY_CHECKPOINT = "checkpoint.pkl"
PARAMS_KIND = "score-params"  # a parameter file's kind (`save_params`)


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of this format (the message says why)."""


class CorruptCheckpoint(CheckpointError):
    """Truncated or damaged: the payload does not match its recorded length or hash."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _flatten(tree: Any) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def encode(kind: str, tree: Any, meta: dict) -> bytes:
    """Container bytes for `tree` (any pytree of arrays) with JSON-able `meta`."""
    payload = serialization.msgpack_serialize(_flatten(tree))
    header = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "payload_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "meta": meta,
    }
    return MAGIC + json.dumps(header).encode() + b"\n" + payload


def decode(data: bytes, kind: str, source: str = "file") -> tuple[dict, dict[str, np.ndarray]]:
    """(header, {path: array}) from container bytes; raises CheckpointError/CorruptCheckpoint."""
    if data[:1] == b"\x80":  # a pickle stream's first opcode (PROTO)
        raise CheckpointError(
            f"{source} is a pickle, which this version never loads (opening it could run "
            "arbitrary code). If you trust whoever wrote it, convert it with "
            "`python -m godiff_jax.legacy RUN_DIR --trust-pickle`."
        )
    if not data.startswith(MAGIC):
        raise CorruptCheckpoint(f"{source} is not a godiff_jax array file (no header)")
    end = data.find(b"\n", len(MAGIC))
    try:
        header = json.loads(data[len(MAGIC) : end])
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptCheckpoint(f"{source}: unreadable header ({err})") from None
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise CheckpointError(
            f"{source} has checkpoint format {version} (written by godiff_jax "
            f"{header.get('package_version')}); this godiff_jax {__version__} reads format "
            f"{FORMAT_VERSION}. "
            + (
                "Upgrade godiff_jax to read it."
                if newer
                else "Resume it with the godiff_jax version that wrote it, or start a new run."
            )
        )
    if header.get("kind") != kind:
        raise CheckpointError(f"{source} holds {header.get('kind')!r}, expected {kind!r}")
    payload = data[end + 1 :]
    if len(payload) != header["payload_bytes"]:
        raise CorruptCheckpoint(
            f"{source} is truncated: {len(payload)} of {header['payload_bytes']} payload bytes"
        )
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise CorruptCheckpoint(f"{source} is damaged: its contents do not match their hash")
    try:
        arrays = serialization.msgpack_restore(payload)
    except Exception as err:  # hash matched, so only a writer bug lands here
        raise CorruptCheckpoint(f"{source}: payload does not decode ({err})") from None
    return header, arrays


def restore(template: Any, arrays: dict[str, np.ndarray], source: str = "file") -> Any:
    """`arrays` put into the structure of `template`, every leaf checked by path, shape and
    dtype; a mismatch raises CheckpointError naming the leaf."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    paths = [jax.tree_util.keystr(p) for p, _ in leaves]
    missing = [p for p in paths if p not in arrays]
    extra = sorted(set(arrays) - set(paths))
    if missing or extra:
        raise CheckpointError(
            f"{source} does not fit: missing leaves {missing[:5]}, unexpected leaves {extra[:5]}"
        )
    out = []
    for path, (_, ref) in zip(paths, leaves, strict=True):
        a = np.asarray(arrays[path])  # ref: an array or a jax.ShapeDtypeStruct
        if a.shape != tuple(ref.shape) or a.dtype != np.dtype(ref.dtype):
            raise CheckpointError(
                f"{source}: leaf {path} has shape {a.shape} {a.dtype}, the model needs "
                f"{ref.shape} {ref.dtype}"
            )
        out.append(a)
    return jax.tree_util.tree_unflatten(treedef, out)


def write_file(path: Path, data: bytes, kind: str) -> None:
    """Write to a temp file, fsync, read back and verify, rename over `path`, fsync the dir."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        decode(tmp.read_bytes(), kind, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def save_checkpoint(workdir: Path, state: Any, meta: dict) -> None:
    """Write the run state; the previous checkpoint is kept until the new one is verified."""
    workdir = Path(workdir)
    data = encode("run-state", state, meta)
    new = workdir / f".{CHECKPOINT}.new"
    write_file(new, data, "run-state")
    if (workdir / CHECKPOINT).exists():
        os.replace(workdir / CHECKPOINT, workdir / PREVIOUS)
    os.replace(new, workdir / CHECKPOINT)
    _fsync_dir(workdir)


def load_checkpoint(
    workdir: Path,
    template: Any,
    upgrade: Callable[[dict, dict], tuple[dict, dict]] | None = None,
) -> tuple[Any, dict] | None:
    """(state shaped as `template`, meta) of the latest good checkpoint, or None if there is
    none. A corrupt latest file falls back to the previous one with a warning. `upgrade`
    maps the arrays and meta of a file written by an older version of the state first."""
    workdir = Path(workdir)
    ours = [workdir / n for n in (CHECKPOINT, PREVIOUS) if (workdir / n).exists()]
    if not ours and (workdir / LEGACY_CHECKPOINT).exists():
        raise CheckpointError(
            f"{workdir / LEGACY_CHECKPOINT} is a pickle checkpoint of an older godiff_jax, "
            "which this version never loads (opening it could run arbitrary code). If you "
            f"trust whoever wrote it, convert it with `python -m godiff_jax.legacy {workdir} "
            "--trust-pickle`."
        )
    errors = []
    for name in (CHECKPOINT, PREVIOUS):
        path = workdir / name
        if not path.exists():
            continue
        try:
            header, arrays = decode(path.read_bytes(), "run-state", str(path))
        except CorruptCheckpoint as err:
            errors.append(str(err))
            continue
        if errors:
            warnings.warn(
                f"{errors[0]}; resuming from the previous checkpoint {path.name} "
                f"(iteration {header['meta'].get('iteration')})",
                stacklevel=2,
            )
        meta = header["meta"]
        if upgrade is not None:
            arrays, meta = upgrade(dict(arrays), meta)
        return restore(template, arrays, str(path)), meta
    if errors:
        raise CorruptCheckpoint("; ".join(errors) + "; no good checkpoint is left")
    return None


def save_params(path: Path, params: Any, meta: dict | None = None) -> None:
    """Score-model parameters alone, for transfer to another system's run."""
    write_file(Path(path), encode(PARAMS_KIND, params, meta or {}), PARAMS_KIND)


def load_params(path: Path, template: Any) -> Any:
    """Parameters from `save_params` (or the params of a run's checkpoint), checked against
    `template` (e.g. `ScoreModel(...).init(key)`); a misfit names the leaf."""
    path = Path(path)
    data = path.read_bytes()
    try:
        _, arrays = decode(data, PARAMS_KIND, str(path))
    except CheckpointError as err:
        if "holds 'run-state'" not in str(err):
            raise
        _, arrays = decode(data, "run-state", str(path))
        prefix = ".train.params"
        arrays = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        arrays = {k: v[0] for k, v in arrays.items()}  # the first seed's
    return restore(template, arrays, str(path))


def check_params(params: Any, template: Any, source: str = "init_params") -> Any:
    """`params` as float32 arrays shaped like `template`; a misfit names the leaf."""
    return restore(template, _flatten(params), source)
