"""GO-Diff in JAX: data-free diffusion for global atomic structure optimisation."""

from godiff_jax.system import (
    System,
    load_template,
    make_cluster_system,
    make_surface_system,
    pt111_heptamer,
    stepped_pt_adatom,
)

__all__ = [
    "System",
    "load_template",
    "make_cluster_system",
    "make_surface_system",
    "pt111_heptamer",
    "stepped_pt_adatom",
]
