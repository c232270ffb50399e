"""A MACE model as arrays and plain metadata, in the package's pickle-free file format.

`MaceModel` holds what the JAX network needs: `config` (JSON-able: elements, radii,
irreps as angular momenta, normalisation constants) and `params` (name -> numpy array).
The weights keep mace-torch's (e3nn's) raw layout, one array per e3nn path; the
normalisation e3nn applies at run time is applied by `network.py`. The symmetric
contraction's coupling tensors (U matrices, depending on the mace-torch version that
built the model) are taken from the model itself and stored sparse (they are ~99.5 %
zeros).

Files are written with `godiff_jax.checkpoint.encode` (kind "mace-model"): a versioned
header, a SHA-256 of the payload, arrays only. `godiff convert-mace` writes them
(`convert.py`, the one place that reads a torch file).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import ase.data
import numpy as np

from godiff_jax import checkpoint

KIND = "mace-model"
# Version of the layout of `config` and `params` inside the file (the container has its own).
LAYOUT_VERSION = 1


class MaceModelError(ValueError):
    """A model file that does not hold a usable MACE model, or elements it does not know."""


@dataclasses.dataclass(frozen=True, eq=False)
class MaceModel:
    config: dict[str, Any]
    params: dict[str, np.ndarray]

    __hash__ = object.__hash__  # identity: usable as a cache key

    @property
    def atomic_numbers(self) -> list[int]:
        return list(self.config["atomic_numbers"])

    @property
    def r_max(self) -> float:
        return float(self.config["r_max"])

    def species_index(self, numbers) -> np.ndarray:
        """[N] index of each atom's element in the model; unknown elements raise, named."""
        table = {z: i for i, z in enumerate(self.atomic_numbers)}
        numbers = np.asarray(numbers, dtype=int).reshape(-1)
        missing = sorted({int(z) for z in numbers if int(z) not in table})
        if missing:
            names = " ".join(ase.data.chemical_symbols[z] for z in missing)
            known = " ".join(ase.data.chemical_symbols[z] for z in self.atomic_numbers)
            raise MaceModelError(f"the MACE model has no element {names} (it knows {known})")
        return np.array([table[int(z)] for z in numbers], dtype=np.int32)

    def e0(self, numbers) -> float:
        """Sum of the atomic reference energies (eV) of `numbers`."""
        e = np.asarray(self.params["atomic_energies"], dtype=float)
        return float(np.sum(e[self.species_index(numbers)]))


def dense_u(params: dict[str, np.ndarray], name: str, shape: list[int]) -> np.ndarray:
    """A coupling tensor stored as (index [nnz, ndim], value [nnz]) back as a dense array."""
    out = np.zeros(shape, dtype=float)
    index = np.asarray(params[f"{name}.index"], dtype=np.int64)
    out[tuple(index.T)] = np.asarray(params[f"{name}.value"], dtype=float)
    return out


def sparse_u(dense: np.ndarray) -> dict[str, np.ndarray]:
    index = np.argwhere(dense != 0).astype(np.int32)
    return {"index": index, "value": dense[tuple(index.T)].astype(float)}


def save_mace(path: str | Path, model: MaceModel) -> None:
    meta = {"layout_version": LAYOUT_VERSION, "config": model.config}
    params = {k: np.asarray(v) for k, v in model.params.items()}
    checkpoint.write_file(Path(path), checkpoint.encode(KIND, params, meta), KIND)


def load_mace(path: str | Path) -> MaceModel:
    """A converted MACE model (`godiff convert-mace`); never unpickles anything."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MaceModelError(f"MACE model file {str(path)!r} does not exist") from None
    header, arrays = checkpoint.decode(data, KIND, str(path))
    meta = header["meta"]
    if meta.get("layout_version") != LAYOUT_VERSION:
        raise MaceModelError(
            f"{path} has MACE layout {meta.get('layout_version')}; this godiff_jax reads "
            f"{LAYOUT_VERSION}: convert the model again with this version"
        )
    # Keys are checkpoint's tree paths of a flat dict, "['name']".
    params = {k[2:-2]: np.asarray(v) for k, v in arrays.items()}
    return MaceModel(meta["config"], params)
