"""The system being searched: a frozen template, mobile atoms and a confinement box.

A `System` is host-side, static data (numpy arrays): energy models, the score model and
the sampler close over it, so it never travels through `jit` as an argument. Mobile
positions are Cartesian Å arrays of shape [n_mobile, 3]; everything batched adds leading
axes to those.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Literal

import ase
import ase.data
import ase.io
import jax.numpy as jnp
import numpy as np
from ase.build import fcc111, surface
from ase.formula import Formula

from godiff_jax import geometry

Mode = Literal["surface", "cluster"]


@dataclasses.dataclass(frozen=True, eq=False)
class System:
    """Template + mobile species + box.

    Surface mode: x/y periodic over `cell[:2]` (the first two cell vectors lie in the xy
    plane), z confined to [box_lo[2], box_hi[2]] (absolute Å). Cluster mode: the mobile
    atoms are confined to the axis-aligned box [box_lo, box_hi] (Å), non-periodic.
    """

    name: str
    mode: Mode
    template_positions: np.ndarray  # [n_template, 3] Å
    template_numbers: np.ndarray  # [n_template] atomic numbers
    mobile_numbers: np.ndarray  # [n_mobile] atomic numbers
    cell: np.ndarray  # [3, 3] Å, rows are cell vectors
    pbc: tuple[bool, bool, bool]
    box_lo: np.ndarray  # [3] Å (x/y unused in surface mode)
    box_hi: np.ndarray  # [3] Å

    # Identity hashing keeps a System usable as a static jit argument / cache key.
    __hash__ = object.__hash__

    @property
    def n_template(self) -> int:
        return len(self.template_numbers)

    @property
    def n_mobile(self) -> int:
        return len(self.mobile_numbers)

    @property
    def n_atoms(self) -> int:
        return self.n_template + self.n_mobile

    @property
    def numbers(self) -> np.ndarray:
        """Atomic numbers of all atoms, template first then mobile."""
        return np.concatenate([self.template_numbers, self.mobile_numbers])

    @property
    def mobile_mask(self) -> np.ndarray:
        """[n_atoms] bool, True on mobile atoms (template atoms are all fixed)."""
        return np.arange(self.n_atoms) >= self.n_template

    @property
    def fixed_mask(self) -> np.ndarray:
        return ~self.mobile_mask

    @property
    def formula(self) -> str:
        return Formula.from_list(
            [ase.data.chemical_symbols[z] for z in self.mobile_numbers]
        ).format("hill")

    def all_positions(self, mobile_positions: jnp.ndarray) -> jnp.ndarray:
        """[..., n_mobile, 3] -> [..., n_atoms, 3] with the template prepended."""
        mobile_positions = jnp.asarray(mobile_positions)
        batch = mobile_positions.shape[:-2]
        template = jnp.broadcast_to(
            jnp.asarray(self.template_positions, mobile_positions.dtype),
            (*batch, self.n_template, 3),
        )
        return jnp.concatenate([template, mobile_positions], axis=-2)

    def confine(self, mobile_positions: jnp.ndarray) -> jnp.ndarray:
        """Clamp into the box and wrap x/y into the periodic cell (surface mode)."""
        return geometry.confine(self, mobile_positions)

    def box_volume(self) -> float:
        """Volume (Å^3) the mobile atoms are confined to."""
        if self.mode == "cluster":
            return float(np.prod(self.box_hi - self.box_lo))
        area = abs(np.linalg.det(self.cell[:2, :2]))
        return float(area * (self.box_hi[2] - self.box_lo[2]))

    def template_atoms(self) -> ase.Atoms:
        return ase.Atoms(
            numbers=self.template_numbers,
            positions=self.template_positions,
            cell=self.cell,
            pbc=self.pbc,
        )


def _parse_formula(formula: str | Sequence[int]) -> np.ndarray:
    if not isinstance(formula, str):
        numbers = np.asarray(formula, dtype=int).reshape(-1)
    else:
        if not formula.strip():
            raise ValueError("mobile formula is empty: give the mobile atoms, e.g. 'Pt7'")
        try:
            symbols = list(Formula(formula.strip()))
            numbers = [ase.data.atomic_numbers[sym] for sym in symbols]
        except (ValueError, KeyError) as err:
            raise ValueError(f"cannot parse mobile formula {formula!r}: {err}") from None
        numbers = np.asarray(numbers, dtype=int)
    if numbers.size == 0:
        raise ValueError("mobile formula is empty: give the mobile atoms, e.g. 'Pt7'")
    bad = [int(z) for z in numbers if not 0 < z < len(ase.data.chemical_symbols)]
    if bad:
        raise ValueError(f"mobile formula has unknown atomic numbers {bad}")
    return numbers


def load_template(template: ase.Atoms | str | os.PathLike) -> ase.Atoms:
    """An `ase.Atoms`, or any ASE-readable file (the last frame is used)."""
    if isinstance(template, ase.Atoms):
        return template.copy()
    path = os.fspath(template)
    if not os.path.exists(path):
        raise FileNotFoundError(f"template file {path!r} does not exist")
    try:
        return ase.io.read(path, index=-1)
    except Exception as err:  # ASE raises many types for unreadable files
        raise ValueError(f"template file {path!r} could not be read by ASE: {err}") from err


def make_surface_system(
    template: ase.Atoms | str | os.PathLike,
    formula: str | Sequence[int],
    z_range: tuple[float, float],
    name: str | None = None,
) -> System:
    """Mobile atoms above a slab: z in [z_top + lo, z_top + hi] Å, x/y periodic.

    `z_top` is the highest template atom; the box must lie inside the cell.
    """
    atoms = load_template(template)
    if len(atoms) == 0:
        raise ValueError("surface mode needs a non-empty template slab")
    numbers = _parse_formula(formula)
    cell = np.asarray(atoms.cell.array, dtype=float)
    if not (atoms.pbc[0] and atoms.pbc[1]):
        raise ValueError(f"surface mode needs a template periodic in x and y, got pbc={atoms.pbc}")
    if np.any(np.abs(cell[:2, 2]) > 1e-8) or np.any(np.abs(cell[2, :2]) > 1e-8):
        raise ValueError(
            "surface mode needs the first two cell vectors in the xy plane and the third "
            f"along z, got cell={cell.tolist()}"
        )
    lo, hi = (float(v) for v in z_range)
    if not hi > lo:
        raise ValueError(f"z box has zero or negative size: z_range=({lo}, {hi}) Å")
    if lo < 0:
        raise ValueError(f"z box must start at or above the top template atom, got lo={lo} Å")
    z_top = float(atoms.positions[:, 2].max())
    z_cell = float(cell[2, 2])
    if z_top + hi >= z_cell:
        raise ValueError(
            f"z box top {z_top + hi:.3f} Å lies outside the cell (height {z_cell:.3f} Å): "
            "the mobile atoms do not fit in the box; add vacuum or lower z_range"
        )
    return System(
        name=name or f"{Formula.from_list(atoms.get_chemical_symbols()).format('hill')}+mobile",
        mode="surface",
        template_positions=np.asarray(atoms.positions, dtype=float),
        template_numbers=np.asarray(atoms.numbers, dtype=int),
        mobile_numbers=numbers,
        cell=cell,
        pbc=(True, True, bool(atoms.pbc[2])),
        box_lo=np.array([0.0, 0.0, z_top + lo]),
        box_hi=np.array([0.0, 0.0, z_top + hi]),
    )


def make_cluster_system(
    formula: str | Sequence[int],
    box: float | Sequence[float],
    template: ase.Atoms | str | os.PathLike | None = None,
    vacuum: float = 10.0,
    name: str | None = None,
) -> System:
    """A gas-phase cluster in the box [0, box] (Å), optionally around a fixed template.

    The cell (used only for output files) is the box plus `vacuum` on each side.
    """
    numbers = _parse_formula(formula)
    size = np.broadcast_to(np.asarray(box, dtype=float), (3,)).copy()
    if np.any(~np.isfinite(size)) or np.any(size <= 0):
        raise ValueError(f"cluster box has zero or negative size: {size.tolist()} Å")
    lo = np.full(3, vacuum)
    hi = lo + size
    if template is None:
        tpos = np.zeros((0, 3))
        tnum = np.zeros((0,), dtype=int)
    else:
        atoms = load_template(template)
        tpos = np.asarray(atoms.positions, dtype=float) + lo
        tnum = np.asarray(atoms.numbers, dtype=int)
    cell = np.diag(hi + vacuum)
    return System(
        name=name or "cluster",
        mode="cluster",
        template_positions=tpos,
        template_numbers=tnum,
        mobile_numbers=numbers,
        cell=cell,
        pbc=(False, False, False),
        box_lo=lo,
        box_hi=hi,
    )


def _shift_to_zero(atoms: ase.Atoms) -> ase.Atoms:
    atoms.positions[:, 2] -= atoms.positions[:, 2].min()
    return atoms


def pt111_heptamer() -> System:
    """Pt7 on a rigid fcc111('Pt', (6,6,2), vacuum=8) slab; z box [1, 6] Å above the top."""
    slab = _shift_to_zero(fcc111("Pt", (6, 6, 2), vacuum=8.0))
    return make_surface_system(slab, "Pt7", (1.0, 6.0), name="pt7_pt111")


def stepped_pt_adatom() -> System:
    """One Pt adatom on surface('Pt', (1,2,2), 5, vacuum=8); z box [0, 4] Å above the top."""
    slab = _shift_to_zero(surface("Pt", (1, 2, 2), 5, vacuum=8.0))
    return make_surface_system(slab, "Pt", (0.0, 4.0), name="pt_adatom_stepped")
