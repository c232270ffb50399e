"""The score model for one System, and its settings (the network itself: `layers`).

The network is PaiNN (Schütt et al. 2021) as schnetpack builds it for the authors' AGeDi
code: an element embedding, `n_blocks` interaction + mixing blocks with separate weights,
Gaussian radial bases with a cosine cutoff, and a 3-layer gated equivariant head on the
final features of each mobile atom, with time entering as [sin(pi t), cos(pi t)] next to
the scalar features. It is E(3)-equivariant and its parameters do not depend on the
system (the embedding covers Z < `NUM_ELEMENTS`), so they transfer between systems.

What makes it fast (DESIGN.md section 5) is where messages flow. The template never
moves, and messages from mobile atoms back into the template are dropped (a modelling
choice), so the template features at the input of every block come from a template-only
pass that depends on the parameters alone: `ScoreModel.context`, computed once per
training step and once per `sample()` call, and only for one atom per class of template
atoms that lattice translations map onto each other (they get identical features: 2 of
the heptamer's 72 atoms). Per structure only the M mobile atoms are
updated, each from the other mobile atoms (dense M x M over periodic images) and from the
template atoms within the cutoff. Those are found without a search: a grid over the
confinement box, built host-side once per System, lists for each grid cell every template
atom image within the cutoff of any point of the cell (exact point-to-cell distance), so
no neighbour within the cutoff is ever dropped for positions on the grid. The grid covers
x/y periodically and the box plus `grid_margin` Å in the confined directions; noisy
training inputs further out than the margin use the nearest grid cell and can miss
template neighbours beyond it (the sampler confines positions to the box, so sampling is
exact). Template messages do not depend on the mobile features, so all blocks' template
messages are computed together at the start; one filter network (rbf -> n_blocks * 3F)
serves every block, as in schnetpack.

On CPU three more things matter (numbers in benchmarks/model_speed.py): every message
sum goes through one function with a hand-written gradient (`messages.messages`), the template
messages of a batch run in chunks of `batch_chunk` structures so that their per-pair
arrays stay in cache, and the template graph's radial bases are host-side constants.

Everything runs in float32 (positions are cast on entry), also under `jax_enable_x64`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from godiff_jax.geometry import minimum_image, periodic_axes
from godiff_jax.model.layers import (
    FAR,
    NUM_ELEMENTS,
    PaiNNScore,
    ScoreContext,
    TwoWay,
    radial,
)
from godiff_jax.model.neighbours import (
    mobile_image_shifts,
    template_classes,
    template_graph,
    template_grid,
)
from godiff_jax.system import System

_F32 = jnp.float32
Params = Any  # the Flax parameter pytree (a nested dict of float32 arrays)


@dataclasses.dataclass(frozen=True)
class ScoreModelConfig:
    """Hyperparameters. The first four fix the parameters; the grid ones are host-side.

    grid_spacing (Å) is the target edge of a neighbour-grid cell: smaller cells mean
    fewer candidate template atoms per mobile atom (faster) and a bigger lookup table.
    grid_margin (Å) is how far beyond the box, in the confined directions, the grid
    stays exact (noisy training inputs leave the box). batch_chunk: the template
    messages of a batch are computed `batch_chunk` structures at a time (`lax.map`;
    0: all at once) so that their per-pair arrays stay in cache: 2-3x faster on CPU.
    template_symmetry: template atoms that a lattice translation of the template onto
    itself maps onto each other have identical template-pass features, so that pass runs
    over one atom per class (2 of the heptamer's 72); exact, off only for comparisons.
    template_row_sums: sum each mobile atom's template neighbours per template row
    before the filters (`messages.row_messages`), exact and much cheaper when the rows are few;
    None picks it by a work estimate, True/False force it (for comparisons).
    template_receives: two-way template messages (issue 8): the template atoms within
    the cutoff of the box receive messages from the mobile atoms and from the template, per
    structure and block, and send what they become on, so that information relays through
    the surface; the others keep the template-only features. The same parameters; costs
    a per-structure pass over those atoms (all 72 of the heptamer's two-layer slab).
    """

    features: int = 64
    n_blocks: int = 4
    n_rbf: int = 30
    cutoff: float = 6.0  # Å
    grid_spacing: float = 0.5  # Å
    grid_margin: float = 1.5  # Å
    batch_chunk: int = 4  # structures per chunk of the template messages (0: one chunk)
    template_symmetry: bool = True  # template pass over lattice-inequivalent atoms only
    template_row_sums: bool | None = None  # per-row template messages; None: when cheaper
    template_receives: bool = False  # two-way template messages (relay through the surface)


class ScoreModel:
    """Score s_theta(x, t) for one System; host-side, closes over its neighbour data.

    `init(key)` gives parameters with the same structure for every System, so a params
    pytree trained on one system runs unchanged on another. `context(params)` is the
    template-only pass; `apply(params, ctx, x, t)` maps mobile positions x [B, M, 3] Å
    and times t [B] to scores [B, M, 3] float32; `model(params, x, t)` does both;
    `representation(params, ctx, x)` gives the final mobile features (force-head hook).
    All are pure functions of arrays, jit/vmap/grad-able (reverse mode, in params and
    positions; the message passing has a custom VJP, so not forward mode).
    """

    def __init__(self, system: System, config: ScoreModelConfig = ScoreModelConfig()):
        numbers = np.concatenate([system.template_numbers, system.mobile_numbers])
        if numbers.size and (numbers.min() < 1 or numbers.max() >= NUM_ELEMENTS):
            raise ValueError(
                f"the score model embeds atomic numbers 1..{NUM_ELEMENTS - 1}, "
                f"got {sorted(set(numbers.tolist()))}"
            )
        self.system = system
        self.config = config
        self._receivers = None  # two-way template messages: (atoms, TwoWay constants)
        self.graph = template_graph(system, config.cutoff) if system.n_template else None
        self.grid = template_grid(system, config.cutoff, config.grid_spacing, config.grid_margin)
        self.shifts = mobile_image_shifts(system, config.cutoff).astype(np.float32)
        self._periodic = periodic_axes(system)
        self._cell = np.asarray(system.cell, float).astype(np.float32)
        self._m_numbers = np.asarray(system.mobile_numbers, np.int32)
        # The template pass runs over one atom per translation class; every template
        # index below (graph neighbours, grid candidates) is a row of that pass.
        rep = template_classes(system) if config.template_symmetry else np.arange(system.n_template)
        self.template_rows = np.unique(rep)  # template atoms the pass runs over
        atom_row = np.searchsorted(self.template_rows, rep).astype(np.int32)  # [Nt]
        self._t_numbers = np.asarray(system.template_numbers, np.int32)[self.template_rows]
        # The template graph's radial channels and unit vectors are constants.
        if self.graph is None:
            r1 = config.n_rbf + 1
            self._t_graph = (np.zeros((0, 1), np.int32), np.zeros((0, 1, r1), np.float32))
            self._t_graph += (np.zeros((0, 1, 3), np.float32),)
            self._image_row = None
        else:
            g = self.graph
            with jax.ensure_compile_time_eval():
                chan, unit = radial(jnp.asarray(g.r), config.n_rbf, config.cutoff)
            rows = self.template_rows
            nbr = atom_row[g.nbr[rows]]
            self._t_graph = (nbr, np.asarray(chan)[rows], np.asarray(unit)[rows])
            self._image_row = atom_row[self.grid.image_atom]
            if config.template_receives:
                self._receivers = _receivers(system, config.cutoff, g, atom_row, chan, unit)
        # Per-row sums pay off when the filter work they do (T rows x (1 + 3 + 1) parts of
        # one block width) is below the per-pair work (K pairs x 3 parts).
        row_sums = config.template_row_sums
        if row_sums is None:
            row_sums = 5 * len(self.template_rows) < 3 * self.n_candidates
        self.net = PaiNNScore(
            config.features, config.n_blocks, config.n_rbf, config.cutoff, row_sums
        )

    @property
    def n_candidates(self) -> int:
        """Candidate template neighbours per mobile atom (Kc, padded)."""
        return 0 if self.grid is None else self.grid.cand_image.shape[1]

    def init(self, key: jax.Array) -> Params:
        """Fresh parameters (float32); the same structure for every System."""
        return _init_params(self.net, key)

    def context(self, params: Params) -> ScoreContext:
        """Template features at the input of each block; depends on params only."""
        return self.net.apply(
            {"params": params},
            self._t_numbers,
            self._m_numbers,
            *self._t_graph,
            method=PaiNNScore.context,
        )

    def _template_neighbours(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [B, M, 3] -> candidate template atoms [B, M, Kc] and vectors [B, M, Kc, 3]."""
        g = self.grid
        if self.system.mode == "surface":
            cell2 = jnp.asarray(self._cell[:2])
            frac = x[..., :2] @ jnp.asarray(np.linalg.inv(self._cell[:2, :2]))
            whole = jnp.floor(frac)
            x = x - whole @ cell2  # wrapped into the cell: the grid is over one cell
            grid_coord = jnp.concatenate([frac - whole, x[..., 2:]], axis=-1)
        else:
            grid_coord = x
        ijk = jnp.floor((grid_coord - g.lo) / g.step).astype(jnp.int32)
        # Beyond the margin the nearest cell stands in (documented in the module doc).
        ijk = jnp.clip(ijk, 0, np.asarray(g.shape) - 1)
        cell_id = (ijk[..., 0] * g.shape[1] + ijk[..., 1]) * g.shape[2] + ijk[..., 2]
        image = jnp.asarray(g.cand_image)[cell_id]  # [B, M, Kc]
        r = jnp.asarray(g.image_pos)[image] - x[..., None, :]
        return jnp.asarray(self._image_row)[image], r

    def _mobile_vectors(self, x: jax.Array) -> jax.Array:
        """x [B, M, 3] -> vectors to every mobile image [B, M, M * S, 3] (self far away)."""
        batch, m, _ = x.shape
        d = x[:, None, :, :] - x[:, :, None, :]  # [B, M(i), M(j), 3]: x_j - x_i
        d = minimum_image(d, self.system.cell, self._periodic)
        shifts = jnp.asarray(self.shifts)
        r = d[:, :, :, None, :] + shifts  # [B, M, M, S, 3]
        is_self = np.eye(m, dtype=bool)[:, :, None] & (np.arange(len(self.shifts)) == 0)
        r = jnp.where(is_self[None, ..., None], FAR, r)
        return r.reshape(batch, m, m * len(self.shifts), 3)

    def _two_way(self, x: jax.Array) -> TwoWay | None:
        """The receivers' geometry for positions x [B, M, 3] (None: one-way messages)."""
        if self._receivers is None:
            return None
        pos, tw = self._receivers
        shifts = jnp.asarray(self.shifts)
        cell, periodic = self.system.cell, self._periodic
        batch, m, _ = x.shape
        to_r = minimum_image(jnp.asarray(pos)[None, None] - x[:, :, None], cell, periodic)
        to_m = minimum_image(x[:, None] - jnp.asarray(pos)[None, :, None], cell, periodic)
        r_mr = (to_r[:, :, :, None, :] + shifts).reshape(batch, m, -1, 3)
        r_rm = (to_m[:, :, :, None, :] + shifts).reshape(batch, len(pos), -1, 3)
        return tw._replace(r_mr=r_mr, r_rm=r_rm)

    def _geometry(self, x: jax.Array) -> tuple:
        """What the network needs of positions x [B, M, 3]: template candidates and the
        vectors to them (None without a template), vectors to the mobile images, S, and
        the two-way receivers' geometry (None unless `template_receives`)."""
        cand, r_t = (None, None) if self.grid is None else self._template_neighbours(x)
        return cand, r_t, self._mobile_vectors(x), len(self.shifts), self._two_way(x)

    def apply(self, params: Params, ctx: ScoreContext, x: jax.Array, t: jax.Array) -> jax.Array:
        """Scores [B, M, 3] (float32) for mobile positions x [B, M, 3] Å at times t [B].

        Unbatched x [M, 3] with scalar t gives [M, 3].
        """
        x, single = _as_batch(x, self.system.n_mobile)
        t = jnp.broadcast_to(jnp.asarray(t, _F32).reshape(-1), x.shape[:1])
        cand, r_t, r_m, n_images, two_way = self._geometry(x)
        out = self.net.apply(
            {"params": params},
            ctx,
            cand,
            r_t,
            r_m,
            n_images,
            t,
            self.config.batch_chunk,
            two_way,
            method=PaiNNScore.mobile,
        )
        return out[0] if single else out

    def representation(
        self, params: Params, ctx: ScoreContext, x: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Final mobile features, scalars [B, M, F] and vectors [B, M, 3, F].

        The entry point of a force head (DESIGN.md, FFG): a second `GatedEquivariantHead`
        on these features, its parameters in the same pytree next to `score_head`.
        """
        x, single = _as_batch(x, self.system.n_mobile)
        cand, r_t, r_m, n_images, two_way = self._geometry(x)
        s, v = self.net.apply(
            {"params": params},
            ctx,
            cand,
            r_t,
            r_m,
            n_images,
            self.config.batch_chunk,
            two_way,
            method=PaiNNScore.representation,
        )
        return (s[0], v[0]) if single else (s, v)

    def __call__(self, params: Params, x: jax.Array, t: jax.Array) -> jax.Array:
        return self.apply(params, self.context(params), x, t)


def _receivers(system: System, cutoff: float, graph, atom_row, chan, unit):
    """(positions [R, 3], TwoWay constants) of the template atoms within the cutoff of the
    box: in surface mode those whose height is within the cutoff of the z range, in
    cluster mode those within the cutoff of the box."""
    pos = np.asarray(system.template_positions, float)
    lo, hi = np.asarray(system.box_lo, float), np.asarray(system.box_hi, float)
    if system.mode == "surface":
        gap = np.maximum(np.maximum(lo[2] - pos[:, 2], pos[:, 2] - hi[2]), 0.0)
    else:
        gap = np.linalg.norm(np.maximum(np.maximum(lo - pos, pos - hi), 0.0), axis=-1)
    (atoms,) = np.nonzero(gap < cutoff)
    n_rows = int(atom_row.max()) + 1
    # A neighbour is the receivers' own row when it receives, else its template-pass row.
    own = np.full(len(pos), -1)
    own[atoms] = n_rows + np.arange(len(atoms))
    nbr_atom = graph.nbr[atoms]
    nbr = np.where(own[nbr_atom] >= 0, own[nbr_atom], atom_row[nbr_atom]).astype(np.int32)
    tw = TwoWay(
        numbers=np.asarray(system.template_numbers, np.int32)[atoms],
        rows=atom_row[atoms].astype(np.int32),
        nbr=nbr,
        chan=np.asarray(chan)[atoms],
        unit=np.asarray(unit)[atoms],
        r_mr=None,
        r_rm=None,
    )
    return pos[atoms].astype(np.float32), tw


@functools.partial(jax.jit, static_argnums=0)
def _init_params(net: PaiNNScore, key: jax.Array) -> Params:
    return net.init(key, method=PaiNNScore.init_all)["params"]


def _as_batch(x, n_mobile: int) -> tuple[jax.Array, bool]:
    """Positions as float32 [B, M, 3]; True when one [M, 3] structure was given."""
    x = jnp.asarray(x, _F32)
    if x.ndim == 2:
        x = x[None]
        single = True
    else:
        single = False
    chex.assert_shape(x, (None, n_mobile, 3))
    return x, single


def score_all_atoms(score: jax.Array, system: System) -> jax.Array:
    """[..., M, 3] mobile scores -> [..., Nt + M, 3] with zeros on the (fixed) template."""
    pad = [(0, 0)] * (score.ndim - 2) + [(system.n_template, 0), (0, 0)]
    return jnp.pad(score, pad)


def count_params(params: Params) -> int:
    return int(sum(np.size(p) for p in jax.tree_util.tree_leaves(params)))
