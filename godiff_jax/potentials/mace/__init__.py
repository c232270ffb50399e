"""MACE (MACE-MP-0 architectures) in JAX: converted mace-torch models, inside jit, no torch.

    godiff convert-mace MODEL.model OUT.mace      # once, with the `mace` extra installed
    model = load_mace("OUT.mace")
    energy = mace_energy_fn(system, model)        # energy(mobile_positions [M, 3]) eV

`model_file.py` the file format, `network.py` the network, `energy.py` the energy
functions (a System's, any atoms', padded graphs), `convert.py` the mace-torch reader.
"""

from godiff_jax.potentials.mace.energy import (
    Graph,
    MacePotential,
    atoms_graph,
    graph_energy,
    mace_energy_fn,
    make_mace_energy,
)
from godiff_jax.potentials.mace.model_file import MaceModel, MaceModelError, load_mace, save_mace

__all__ = [
    "Graph",
    "MaceModel",
    "MaceModelError",
    "MacePotential",
    "atoms_graph",
    "graph_energy",
    "load_mace",
    "mace_energy_fn",
    "make_mace_energy",
    "save_mace",
]
