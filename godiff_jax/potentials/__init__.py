"""Energy models: pure JAX functions of the mobile positions of a System (eV, Å)."""

from godiff_jax.potentials.emt import SUPPORTED_ELEMENTS, emt_energy_fn, make_emt_energy
from godiff_jax.potentials.lj import lj_energy_fn, make_lj_energy

__all__ = [
    "SUPPORTED_ELEMENTS",
    "emt_energy_fn",
    "lj_energy_fn",
    "make_emt_energy",
    "make_lj_energy",
]
