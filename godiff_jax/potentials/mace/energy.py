"""MACE energies as pure JAX functions of positions (eV, Å): forces by grad, batches by vmap.

- `mace_energy_fn(system, model)`: energy(mobile_positions [M, 3]) of a `System`. Its
  edge list has a fixed shape that no structure can overflow: the template-template
  edges are listed once on the host, and every pair involving a mobile atom is a slot of
  its own (each mobile atom against the template images that can reach the bin of the
  cell it sits in, as `geometry.Candidates` lists them, and against every periodic image
  of every mobile atom), masked by the cutoff. Nothing is ever dropped.
- `make_mace_energy(model, numbers, cell, pbc, capacity)`: energy(positions [N, 3]) of
  any atoms, with a padded neighbour list of `capacity` edges compacted from all pairs
  inside jit. A structure with more edges gives NaN (never a wrong number);
  `MacePotential` checks the counts on the host and reallocates a larger list.

Both compute in the dtype of the positions (float32 or float64).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from godiff_jax.geometry import IMAGE_MARGIN, PeriodicImages
from godiff_jax.potentials.mace.model_file import MaceModel, load_mace
from godiff_jax.potentials.mace.network import node_energies
from godiff_jax.system import System

EnergyFn = Callable[[jax.Array], jax.Array]


def as_model(model: MaceModel | str) -> MaceModel:
    return load_mace(model) if isinstance(model, str) else model


def _floating(x) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def _template_edges(tpos: np.ndarray, shifts: np.ndarray, r_max: float):
    """Host: (receiver, sender, vector receiver - sender image) of template pairs, float64."""
    recv, send, vec = [], [], []
    zero = np.all(shifts == 0.0, axis=1)
    for s, shift in enumerate(shifts):
        d = tpos[None, :, :] + shift - tpos[:, None, :]  # [I, J, 3]: image of j seen from i
        ok = np.sum(d * d, axis=-1) < r_max**2
        if zero[s]:
            np.fill_diagonal(ok, False)
        i, j = np.nonzero(ok)
        recv.append(i)
        send.append(j)
        vec.append(-d[i, j])
    return (
        np.concatenate(recv).astype(np.int32),
        np.concatenate(send).astype(np.int32),
        np.concatenate(vec).reshape(-1, 3),
    )


@functools.lru_cache(maxsize=16)  # one function per (System, model): compiled code is reused
def mace_energy_fn(system: System, model: MaceModel | str) -> EnergyFn:
    """MACE energy (eV) of template + mobile atoms: energy(mobile_positions [M, 3] Å)."""
    model = as_model(model)
    species = model.species_index(system.numbers)  # template first, then mobile
    e0 = model.e0(system.numbers)
    r_max = model.r_max
    n_t, n_m = system.n_template, system.n_mobile
    images = PeriodicImages(system.cell, system.pbc, r_max + IMAGE_MARGIN)
    tpos = images.wrap_host(np.asarray(system.template_positions, float).reshape(-1, 3))
    if n_t:
        tt_recv, tt_send, tt_vec = _template_edges(tpos, images.shifts(), r_max)
        cand = images.candidates(tpos)
    else:
        tt_recv = tt_send = np.zeros(0, np.int32)
        tt_vec = np.zeros((0, 3))
        cand = None
    n_shift = len(images.pair_shifts())
    mm_pair = ~(np.eye(n_m, dtype=bool)[:, :, None] & (np.arange(n_shift) == 0))  # [M, M, S]
    mob = n_t + np.arange(n_m)
    mm_recv = np.broadcast_to(mob[:, None, None], mm_pair.shape).reshape(-1)
    mm_send = np.broadcast_to(mob[None, :, None], mm_pair.shape).reshape(-1)
    cut2 = r_max * r_max

    def energy(mobile_positions: jax.Array) -> jax.Array:
        x = _floating(mobile_positions)
        dtype = x.dtype
        x = images.wrap(x.reshape(n_m, 3))
        d = images.pair_vectors(x)  # [M, M, S, 3]: images of j seen from i
        mm_vec = -d.reshape(-1, 3)
        mm_ok = (jnp.asarray(mm_pair) & (jnp.sum(d * d, axis=-1) < cut2)).reshape(-1)
        recv = [jnp.asarray(tt_recv), jnp.asarray(mm_recv)]
        send = [jnp.asarray(tt_send), jnp.asarray(mm_send)]
        vec = [jnp.asarray(tt_vec, dtype), mm_vec]
        ok = [jnp.ones(len(tt_recv), bool), mm_ok]
        if cand is not None:
            pos, idx, live = cand.gather(x)  # [M, C] template images near each mobile atom
            v = x[:, None, :] - pos  # receiver mobile, sender template image
            mt_ok = (live & (jnp.sum(v * v, axis=-1) < cut2)).reshape(-1)
            m_idx = np.broadcast_to(mob[:, None], live.shape).reshape(-1)
            recv += [jnp.asarray(m_idx), idx.reshape(-1)]
            send += [idx.reshape(-1), jnp.asarray(m_idx)]
            vec += [v.reshape(-1, 3), -v.reshape(-1, 3)]
            ok += [mt_ok, mt_ok]
        e = node_energies(
            model,
            species,
            jnp.concatenate(send),
            jnp.concatenate(recv),
            jnp.concatenate(vec),
            jnp.concatenate(ok),
        )
        # E0s added last as a Python float: in float32 they would swamp the differences.
        return jnp.sum(e) + e0

    return energy


class _Plan:
    """Host constants of the generic neighbour list: all ordered pairs over the images."""

    def __init__(self, model: MaceModel, numbers, cell, pbc):
        self.model = model
        self.species = model.species_index(numbers)
        self.e0 = model.e0(numbers)
        self.n = len(self.species)
        self.images = PeriodicImages(cell, pbc, model.r_max + IMAGE_MARGIN)
        self.shifts = self.images.shifts()  # [S, 3]
        n, s = self.n, len(self.shifts)
        self.pair = ~(np.eye(n, dtype=bool)[:, :, None] & (np.arange(s) == 0))  # [N, N, S]
        self.max_edges = int(self.pair.sum())

    def pairs(self, x):
        """[N*N*S, 3] vectors receiver - sender image and [N*N*S] within-cutoff flags."""
        x = self.images.wrap(x.reshape(self.n, 3))
        shifts = jnp.asarray(self.shifts, x.dtype)
        d = x[None, :, None, :] + shifts[None, None] - x[:, None, None, :]  # [N, N, S, 3]
        ok = jnp.asarray(self.pair) & (jnp.sum(d * d, axis=-1) < self.model.r_max**2)
        return -d.reshape(-1, 3), ok.reshape(-1)

    def energy_and_count(self, positions: jax.Array, capacity: int):
        """(energy, number of edges needed); NaN energy when they exceed `capacity`."""
        x = _floating(positions)
        vec, ok = self.pairs(x)
        count = jnp.sum(ok)
        (slot,) = jnp.nonzero(ok, size=capacity, fill_value=0)
        live = jnp.arange(capacity) < count
        n, s = self.n, len(self.shifts)
        recv, send = slot // (n * s), (slot // s) % n
        e = node_energies(self.model, self.species, send, recv, vec[slot], live)
        e = jnp.sum(e) + self.e0
        return jnp.where(count > capacity, jnp.nan, e), count


def make_mace_energy(
    model: MaceModel | str,
    numbers: Sequence[int] | np.ndarray,
    cell: np.ndarray | None = None,
    pbc: bool | Sequence[bool] = False,
    capacity: int | None = None,
) -> EnergyFn:
    """MACE energy (eV) of any atoms: energy(positions [N, 3] Å) -> scalar.

    `capacity`: edges of the padded neighbour list (default: every ordered pair of atoms
    over the periodic images that can matter, which cannot overflow). A structure with
    more edges than `capacity` gives NaN; `MacePotential` reallocates instead.
    """
    plan = _Plan(as_model(model), numbers, cell, pbc)
    cap = plan.max_edges if capacity is None else int(capacity)
    return lambda positions: plan.energy_and_count(positions, cap)[0]


class MacePotential:
    """Host-side energies and forces of batches of one system, reallocating the list.

    Keeps one jitted program per neighbour-list capacity; after each call the edge counts
    are checked, and if any structure needed more edges than allocated the capacity
    grows (to 1.25x the largest count) and the batch is computed again.
    """

    def __init__(self, model: MaceModel | str, numbers, cell=None, pbc=False, capacity=None):
        self.plan = _Plan(as_model(model), numbers, cell, pbc)
        self.capacity = capacity
        self._compiled: dict[int, Callable] = {}

    def _fn(self, capacity: int) -> Callable:
        if capacity not in self._compiled:
            f = jax.value_and_grad(self.plan.energy_and_count, has_aux=True)
            self._compiled[capacity] = jax.jit(jax.vmap(lambda x: f(x, capacity)))
        return self._compiled[capacity]

    def _allocate(self, count: int) -> int:
        return min(self.plan.max_edges, max(1, math.ceil(1.25 * count)))

    def __call__(self, positions) -> tuple[np.ndarray, np.ndarray]:
        """energies [B] (eV) and forces [B, N, 3] (eV/Å) of positions [B, N, 3] (or [N, 3])."""
        x = _floating(positions)
        single = x.ndim == 2
        x = x[None] if single else x
        if self.capacity is None:  # first call: size the list to this batch
            count = int(jnp.max(jax.vmap(lambda p: jnp.sum(self.plan.pairs(p)[1]))(x)))
            self.capacity = self._allocate(count)
        (e, count), g = self._fn(self.capacity)(x)
        needed = int(np.max(np.asarray(count)))
        if needed > self.capacity:
            self.capacity = self._allocate(needed)
            (e, count), g = self._fn(self.capacity)(x)
        e, f = np.asarray(e, float), -np.asarray(g, float)
        return (e[0], f[0]) if single else (e, f)


class Graph(NamedTuple):
    """A padded graph of atoms for `graph_energy` (numpy; stack several to vmap)."""

    positions: np.ndarray  # [N, 3] Å (padding: anywhere)
    species: np.ndarray  # [N] model element index (padding: 0)
    senders: np.ndarray  # [E] int32
    receivers: np.ndarray  # [E] int32
    shifts: np.ndarray  # [E, 3] Å, the sender image's translation
    edge_mask: np.ndarray  # [E] bool, False on padding
    node_mask: np.ndarray  # [N] bool, False on padding


def atoms_graph(model: MaceModel, atoms, n_nodes: int, n_edges: int) -> Graph:
    """Host: the graph of `ase.Atoms` within the model's cutoff, padded to fixed sizes."""
    from ase.neighborlist import neighbor_list

    n = len(atoms)
    i, j, s = neighbor_list("ijS", atoms, model.r_max)
    if n > n_nodes or len(i) > n_edges:
        raise ValueError(f"{n} atoms, {len(i)} edges do not fit in {n_nodes}, {n_edges}")
    pos = np.zeros((n_nodes, 3))
    pos[:n] = atoms.positions
    species = np.zeros(n_nodes, np.int32)
    species[:n] = model.species_index(atoms.numbers)
    e = len(i)
    send, recv = np.zeros(n_edges, np.int32), np.zeros(n_edges, np.int32)
    send[:e], recv[:e] = j, i
    shifts = np.zeros((n_edges, 3))
    shifts[:e] = s @ atoms.cell.array
    return Graph(pos, species, send, recv, shifts, np.arange(n_edges) < e, np.arange(n_nodes) < n)


def graph_energy(model: MaceModel | str) -> Callable[..., jax.Array]:
    """energy(positions, species, senders, receivers, shifts, edge_mask, node_mask) (eV) of
    one padded `Graph`: species are traced, so one compiled program serves every graph
    of the same padded size (vmap over stacked graphs for a batch of structures)."""
    model = as_model(model)
    e0_table = np.asarray(model.params["atomic_energies"], float)

    def energy(positions, species, senders, receivers, shifts, edge_mask, node_mask):
        x = _floating(positions)
        vec = x[receivers] - x[senders] - jnp.asarray(shifts, x.dtype)
        e = node_energies(model, jnp.asarray(species), senders, receivers, vec, edge_mask)
        e = e + jnp.asarray(e0_table, x.dtype)[species]
        return jnp.sum(jnp.where(node_mask, e, 0.0))

    return energy
