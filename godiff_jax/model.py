"""PaiNN score model in which only the mobile atoms receive messages.

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
sum goes through one function with a hand-written gradient (`_messages`), the template
messages of a batch run in chunks of `batch_chunk` structures so that their per-pair
arrays stay in cache, and the template graph's radial bases are host-side constants.

Everything runs in float32 (positions are cast on entry), also under `jax_enable_x64`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from godiff_jax.system import System

NUM_ELEMENTS = 101  # embedding rows: atomic numbers 0..100, shared by every system
_F32 = jnp.float32
_NORM_EPS = 1e-8  # inside the sqrt of feature-vector norms: finite gradients at zero
_DIST_EPS = 1e-10  # Å^2 inside the sqrt of distances: coinciding atoms stay finite
_FAR = 1.0e3  # Å: padded neighbours sit this far away, so their rbf and cutoff are 0
_GRID_TOL = 1e-2  # Å of slack in grid-cell distances, for float32 rounding of lookups

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
    before the filters (`_row_messages`), exact and much cheaper when the rows are few;
    None picks it by a work estimate, True/False force it (for comparisons).
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


# ----------------------------------------------------------------------------- layers


def _dense(features: int, name: str, use_bias: bool = True) -> nn.Dense:
    # schnetpack's Dense: Xavier-uniform weights, zero bias.
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=_F32,
        param_dtype=_F32,
        kernel_init=nn.initializers.xavier_uniform(),
        name=name,
    )


class _MLP(nn.Module):
    """Dense -> silu -> Dense."""

    hidden: int
    out: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _dense(self.out, "dense_1")(nn.silu(_dense(self.hidden, "dense_0")(x)))


class PaiNNMixing(nn.Module):
    """Intra-atomic update: s [..., F], v [..., 3, F] -> same shapes."""

    features: int

    @nn.compact
    def __call__(self, s: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
        f = self.features
        vmix = _dense(2 * f, "mu_channel_mix", use_bias=False)(v)
        v_v, v_w = vmix[..., :f], vmix[..., f:]
        v_vn = jnp.sqrt(jnp.sum(v_v**2, axis=-2) + _NORM_EPS)
        x = _MLP(f, 3 * f, name="intraatomic_context_net")(jnp.concatenate([s, v_vn], -1))
        dq, dmu, dqmu = x[..., :f], x[..., f : 2 * f], x[..., 2 * f :]
        s = s + dq + dqmu * jnp.sum(v_v * v_w, axis=-2)
        v = v + dmu[..., None, :] * v_w
        return s, v


class GatedEquivariantBlock(nn.Module):
    """schnetpack's gated equivariant block: (s, v) -> (s', v'), v' = gate(s, |Vv|) * Wv."""

    n_sout: int
    n_vout: int
    n_hidden: int
    scalar_activation: bool

    @nn.compact
    def __call__(self, s: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
        vmix = _dense(2 * self.n_vout, "mix_vectors", use_bias=False)(v)
        v_v, v_w = vmix[..., : self.n_vout], vmix[..., self.n_vout :]
        v_vn = jnp.sqrt(jnp.sum(v_v**2, axis=-2) + _NORM_EPS)
        x = _MLP(self.n_hidden, self.n_sout + self.n_vout, name="scalar_net")(
            jnp.concatenate([s, v_vn], -1)
        )
        s_out, gate = x[..., : self.n_sout], x[..., self.n_sout :]
        if self.scalar_activation:
            s_out = nn.silu(s_out)
        return s_out, gate[..., None, :] * v_w


class GatedEquivariantHead(nn.Module):
    """schnetpack's build_gated_equivariant_mlp(s_in, v_in, 1, n_layers): one vector out.

    Widths halve per layer (66/64 -> 33/32 -> 16/16 -> 1/1 for F = 64 plus 2 time
    features), as in AGeDi's PositionsScore head.
    """

    n_layers: int = 3

    @nn.compact
    def __call__(self, s: jax.Array, v: jax.Array) -> jax.Array:
        s_n, v_n = s.shape[-1], v.shape[-1]
        s_sizes, v_sizes = [], []
        for _ in range(self.n_layers):
            s_sizes.append(s_n)
            v_sizes.append(v_n)
            s_n, v_n = max(1, s_n // 2), max(1, v_n // 2)
        s_sizes.append(1)
        v_sizes.append(1)
        for i in range(self.n_layers):
            s, v = GatedEquivariantBlock(
                n_sout=s_sizes[i + 1],
                n_vout=v_sizes[i + 1],
                n_hidden=s_sizes[i],
                scalar_activation=i < self.n_layers - 1,
                name=f"block_{i}",
            )(s, v)
        return v[..., 0]


def _radial(r: jax.Array, n_rbf: int, cutoff: float) -> tuple[jax.Array, jax.Array]:
    """r [..., 3] Å -> (channels [..., n_rbf + 1], unit vectors [..., 3]).

    The channels are the Gaussian radial bases times the cosine cutoff, then the cutoff
    itself, so `channels @ [kernel; bias]` is the cut-off filter (rbf @ kernel + bias) *
    fcut of schnetpack's PaiNN in one matrix product.
    """
    d = jnp.sqrt(jnp.sum(r * r, axis=-1) + _DIST_EPS)
    offsets = np.linspace(0.0, cutoff, n_rbf, dtype=np.float32)
    width = offsets[1] - offsets[0]
    fcut = jnp.where(d < cutoff, 0.5 * (jnp.cos(d * (math.pi / cutoff)) + 1.0), 0.0)
    rbf = jnp.exp((-0.5 / width**2) * (d[..., None] - offsets) ** 2) * fcut[..., None]
    return jnp.concatenate([rbf, fcut[..., None]], axis=-1), r / d[..., None]


# ------------------------------------------------------------------ message passing
#
# Every message sum in the network has one form. Atom a receives from K neighbours
# with radial channels c [A, K, R1] (see `_radial`), unit vectors u [A, K, 3] and
# indices n [A, K] into per-atom tables of the senders' features:
#   ds[a]    = sum_k W_q(c_ak) * T_q[n_ak]
#   dv[a, x] = sum_k W_R(c_ak) * T_R[n_ak] * u_akx + W_mu(c_ak) * T_vm[n_ak, x]
# with W_p = c @ kernel_p, T_q and T_R the q and R parts of the senders' interatomic
# context and T_vm its mu part times the senders' vectors. Autodiff of this form makes
# XLA on CPU materialise broadcast per-pair products several times over, so the
# gradient is written out: per-pair filter cotangents, one matrix product per kernel
# and one scatter-add per table.


class _Tables(NamedTuple):
    q: jax.Array  # [N, C] sender q context
    r: jax.Array  # [N, C] sender R context
    vm: jax.Array  # [3, N, C] sender mu context times sender vectors (x, y, z first)


def _filters(chan, kq, kr, km):
    a, k, r1 = chan.shape
    flat = chan.reshape(a * k, r1)
    return [(flat @ kp).reshape(a, k, -1) for kp in (kq, kr, km)]


def _messages_impl(chan, unit, nbr, kq, kr, km, tab):
    wq, wr, wm = _filters(chan, kq, kr, km)
    ds = jnp.sum(wq * tab.q[nbr], axis=1)
    dv = jnp.einsum("akx,akc->axc", unit, wr * tab.r[nbr])
    dv = dv + jnp.stack([jnp.sum(wm * tab.vm[x][nbr], axis=1) for x in range(3)], axis=1)
    return ds, dv


@jax.custom_vjp
def _messages(chan, unit, nbr, kq, kr, km, tab):
    """(ds [A, C], dv [A, 3, C]); see the comment above."""
    return _messages_impl(chan, unit, nbr, kq, kr, km, tab)


def _messages_fwd(chan, unit, nbr, kq, kr, km, tab):
    return _messages_impl(chan, unit, nbr, kq, kr, km, tab), (chan, unit, nbr, kq, kr, km, tab)


def _messages_bwd(res, cot):
    chan, unit, nbr, kq, kr, km, tab = res
    gs, gv = cot  # [A, C], [A, 3, C]
    a, k, r1 = chan.shape
    wq, wr, wm = _filters(chan, kq, kr, km)
    gr = tab.r[nbr]
    y = jnp.einsum("akx,axc->akc", unit, gv)
    # Cotangents of the per-pair filters W_q, W_R, W_mu.
    dwm = sum(gv[:, None, x] * tab.vm[x][nbr] for x in range(3))
    dws = (gs[:, None, :] * tab.q[nbr], y * gr, dwm)
    flat = chan.reshape(a * k, r1)
    dkq, dkr, dkm = (flat.T @ dw.reshape(a * k, -1) for dw in dws)
    # Position cotangents: dead code unless positions are differentiated.
    d_chan = sum((dw.reshape(a * k, -1) @ kp.T) for dw, kp in zip(dws, (kq, kr, km), strict=True))
    d_chan = d_chan.reshape(a, k, r1)
    d_unit = jnp.einsum("axc,akc->akx", gv, wr * gr)
    rows = nbr.reshape(-1)

    def seg(x):
        return jax.ops.segment_sum(x.reshape(a * k, -1), rows, tab.q.shape[0])

    d_tab = _Tables(
        q=seg(gs[:, None, :] * wq),
        r=seg(y * wr),
        vm=jnp.stack([seg(wm * gv[:, None, x]) for x in range(3)]),
    )
    d_nbr = np.zeros(nbr.shape, dtype=jax.dtypes.float0)
    return d_chan, d_unit, d_nbr, dkq, dkr, dkm, d_tab


_messages.defvjp(_messages_fwd, _messages_bwd)


def _row_messages(chan, unit, nbr, kq, kr, km, tab):
    """`_messages` with the sums over neighbours taken per sender row first.

    The filters are linear in the radial channels, so with T sender rows
    sum_k W(c_ak) * T[n_ak] = sum_t (sum_{k: n_ak = t} c_ak) @ kernel * T[t]: the filter
    matrix products shrink from [A * K, R1] to [A * T, R1] (and [A * T * 3, R1] for the
    unit-vector term). Exact up to float rounding; worth it when T is small against the
    K neighbours, as for a periodic template (T = 2 on the heptamer, K = 39).
    """
    onehot = jax.nn.one_hot(nbr, tab.q.shape[0], dtype=chan.dtype)  # [A, K, T]
    c = jnp.einsum("akt,akr->atr", onehot, chan)
    d = jnp.einsum("akt,akx,akr->atxr", onehot, unit, chan)
    ds = jnp.einsum("atc,tc->ac", c @ kq, tab.q)
    dv = jnp.einsum("atxc,tc->axc", d @ kr, tab.r)
    dv = dv + jnp.einsum("atc,xtc->axc", c @ km, tab.vm)
    return ds, dv


class PaiNNScore(nn.Module):
    """The network. Geometry comes in precomputed; see `ScoreModel` for the public API.

    A force head (DESIGN.md, FFG) belongs next to `score_head`: a second
    `GatedEquivariantHead` applied to the same `(s, v)` that `representation` returns
    (with or without the time features, as the force model needs).
    """

    features: int = 64
    n_blocks: int = 4
    n_rbf: int = 30
    cutoff: float = 6.0
    # Template messages summed per template row before the filters (`_row_messages`);
    # a speed choice made per System, the parameters and results are the same.
    template_row_sums: bool = False

    def setup(self):
        f, nb = self.features, self.n_blocks
        # N(0, 1) rows as torch.nn.Embedding (schnetpack), not flax's 1/sqrt(F) default.
        self.embedding = nn.Embed(
            NUM_ELEMENTS,
            f,
            dtype=_F32,
            param_dtype=_F32,
            embedding_init=nn.initializers.normal(1.0),
        )
        # One filter network rbf -> [n_blocks, (q, R, mu), F] for all blocks, as
        # schnetpack's PaiNN(shared_filters=False); columns ordered (block, part, F).
        xavier = nn.initializers.xavier_uniform()
        self.filter_kernel = self.param("filter_kernel", xavier, (self.n_rbf, nb * 3 * f), _F32)
        self.filter_bias = self.param("filter_bias", nn.initializers.zeros, (nb * 3 * f,), _F32)
        self.interactions = [_MLP(f, 3 * f, name=f"interaction_{b}") for b in range(nb)]
        self.mixings = [PaiNNMixing(f, name=f"mixing_{b}") for b in range(nb)]
        self.score_head = GatedEquivariantHead(3)

    def _kernels(self, blocks: slice) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Filter kernels with the bias as last row, [n_rbf + 1, n * F] for the q, R, mu
        parts of the given blocks (blocks outer, features inner)."""
        f, nb = self.features, self.n_blocks
        k = jnp.concatenate([self.filter_kernel, self.filter_bias[None]], axis=0)
        k = k.reshape(self.n_rbf + 1, nb, 3, f)[:, blocks]
        return tuple(k[:, :, p].reshape(self.n_rbf + 1, -1) for p in range(3))

    def _tables(self, b: int, s: jax.Array, v: jax.Array) -> _Tables:
        """Sender tables of block b from scalars s [N, F] and vectors v [N, 3, F]."""
        f = self.features
        x = self.interactions[b](s)
        return _Tables(q=x[:, :f], r=x[:, f : 2 * f], vm=x[None, :, 2 * f :] * v.transpose(1, 0, 2))

    def context(
        self,
        t_numbers: jax.Array,
        m_numbers: jax.Array,
        nbr: jax.Array,
        chan: jax.Array,
        unit: jax.Array,
    ) -> dict[str, jax.Array]:
        """Template-only pass.

        Over T template rows (one atom per translation class, see `template_classes`):
        t_numbers [T], m_numbers [M], nbr [T, Kt] neighbours as row indices, chan
        [T, Kt, R1] and unit [T, Kt, 3] their radial channels and unit vectors (see
        `_radial`; constants of the template). Returns the mobile embedding
        s0 [M, F] and the template sender tables of every block, blocks concatenated
        along the feature axis: q, r [T, nb * F] and vm [3, T, nb * F].
        """
        nb = self.n_blocks
        s0 = self.embedding(m_numbers)
        n_t = t_numbers.shape[0]
        if n_t == 0:
            return {"s0": s0}
        s = self.embedding(t_numbers)
        v = jnp.zeros((n_t, 3, self.features), _F32)
        tables = []
        for b in range(nb):
            tab = self._tables(b, s, v)
            tables.append(tab)
            if b == nb - 1:
                break  # the last block's template output feeds nothing
            ds, dv = _messages(chan, unit, nbr, *self._kernels(slice(b, b + 1)), tab)
            s, v = self.mixings[b](s + ds, v + dv)
        return {
            "s0": s0,
            "q": jnp.concatenate([t.q for t in tables], axis=-1),
            "r": jnp.concatenate([t.r for t in tables], axis=-1),
            "vm": jnp.concatenate([t.vm for t in tables], axis=-1),
        }

    def _template_messages(self, ctx, cand, r_t, chunk_atoms: int):
        """Template messages of all blocks, ds [A, nb * F] and dv [A, 3, nb * F]."""
        tab = _Tables(ctx["q"], ctx["r"], ctx["vm"])
        kernels = self._kernels(slice(None))
        k_c = cand.shape[-1]
        cand, r_t = cand.reshape(-1, k_c), r_t.astype(_F32).reshape(-1, k_c, 3)

        def run(nbr, r):
            chan, unit = _radial(r, self.n_rbf, self.cutoff)
            if self.template_row_sums:
                return _row_messages(chan, unit, nbr, *kernels, tab)
            return _messages(chan, unit, nbr, *kernels, tab)

        a = cand.shape[0]
        if not chunk_atoms or a <= chunk_atoms:
            return run(cand, r_t)
        n = -(-a // chunk_atoms)
        pad = n * chunk_atoms - a  # padded atoms see only far-away neighbours
        cand = jnp.pad(cand, ((0, pad), (0, 0)))
        r_t = jnp.pad(r_t, ((0, pad), (0, 0), (0, 0)), constant_values=_FAR)
        shape = (n, chunk_atoms, k_c)
        ds, dv = jax.lax.map(lambda nr: run(*nr), (cand.reshape(shape), r_t.reshape(*shape, 3)))
        return ds.reshape(n * chunk_atoms, -1)[:a], dv.reshape(n * chunk_atoms, 3, -1)[:a]

    def representation(
        self,
        ctx: dict[str, jax.Array],
        cand: jax.Array | None,
        r_t: jax.Array | None,
        r_m: jax.Array,
        n_images: int,
        chunk: int = 0,
    ) -> tuple[jax.Array, jax.Array]:
        """Final mobile features s [B, M, F], v [B, M, 3, F].

        cand [B, M, Kc] template indices of each mobile atom's candidate neighbours and
        r_t [B, M, Kc, 3] Å the vectors to them (None without a template); r_m
        [B, M, M * S, 3] Å vectors to the S periodic images of every mobile atom, j-major
        (the self pair with zero shift placed far away). The template messages run in
        chunks of `chunk` structures (0: all at once), see `ScoreModelConfig`.
        """
        f, nb = self.features, self.n_blocks
        batch, m = r_m.shape[0], r_m.shape[1]
        s = jnp.broadcast_to(ctx["s0"], (batch, m, f)).reshape(batch * m, f)
        v = jnp.zeros((batch * m, 3, f), _F32)
        if cand is not None:
            # Template messages of every block at once: they ignore the mobile features.
            ds_t, dv_t = self._template_messages(ctx, cand, r_t, chunk * m)
        chan, unit = _radial(r_m.astype(_F32).reshape(batch * m, -1, 3), self.n_rbf, self.cutoff)
        # Mobile neighbour j (image s) of atom (b, i) is row b * M + j of the tables.
        nbr = jnp.arange(batch)[:, None, None] * m + jnp.arange(m).repeat(n_images)
        nbr = jnp.broadcast_to(nbr, (batch, m, m * n_images)).reshape(batch * m, -1)
        for b in range(nb):
            tab = self._tables(b, s, v)
            ds, dv = _messages(chan, unit, nbr, *self._kernels(slice(b, b + 1)), tab)
            if cand is not None:
                blk = slice(b * f, (b + 1) * f)
                ds = ds + ds_t[:, blk]
                dv = dv + dv_t[..., blk]
            s, v = self.mixings[b](s + ds, v + dv)
        return s.reshape(batch, m, f), v.reshape(batch, m, 3, f)

    def score(self, s: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
        """Gated equivariant head: s [B, M, F], v [B, M, 3, F], t [B] -> [B, M, 3]."""
        tf = jnp.stack([jnp.sin(math.pi * t), jnp.cos(math.pi * t)], axis=-1)
        tf = jnp.broadcast_to(tf[:, None, :], (*s.shape[:-1], 2))
        return self.score_head(jnp.concatenate([s, tf], axis=-1), v)

    def mobile(self, ctx, cand, r_t, r_m, n_images: int, t: jax.Array, chunk: int = 0):
        s, v = self.representation(ctx, cand, r_t, r_m, n_images, chunk)
        return self.score(s, v, t)

    def init_all(self) -> jax.Array:
        """Touch every layer once (used by `init`); one template and one mobile atom."""
        z = jnp.array([1], jnp.int32)
        r = jnp.full((1, 1, 1, 3), 2.0, _F32)
        ctx = self.context(
            z, z, jnp.zeros((1, 1), jnp.int32), *_radial(r[0], self.n_rbf, self.cutoff)
        )

        return self.mobile(ctx, jnp.zeros((1, 1, 1), jnp.int32), r, r, 1, jnp.zeros(1))


# ------------------------------------------------------------------ host-side geometry


def _lattice_heights(cell: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of the cell (Å), one per cell vector."""
    return 1.0 / np.linalg.norm(np.linalg.inv(cell).T, axis=1)


def _image_shifts(cell: np.ndarray, periodic: np.ndarray, n_max: np.ndarray) -> np.ndarray:
    """[S, 3] Å: n @ cell for integer n in [-n_max, n_max] on periodic axes, zero first."""
    ranges = [
        range(-int(n), int(n) + 1) if p else range(1) for n, p in zip(n_max, periodic, strict=True)
    ]
    ns = sorted(itertools.product(*ranges), key=lambda n: (sum(map(abs, n)), n))
    return np.asarray(ns, dtype=float) @ cell


class TemplateGraph(NamedTuple):
    """Template-template neighbours within the cutoff, padded to K per atom."""

    nbr: np.ndarray  # [Nt, Kt] int32 neighbour index (0 on padding)
    r: np.ndarray  # [Nt, Kt, 3] float32 Å vector i -> j image (far away on padding)


class TemplateGrid(NamedTuple):
    """Candidate template neighbours per grid cell over the confinement box."""

    lo: np.ndarray  # [3] grid origin: fractional (x, y) and Å (z) in surface mode; Å in 3D
    step: np.ndarray  # [3] cell size in the same units
    shape: tuple[int, int, int]  # cells per axis
    cand_image: np.ndarray  # [n_cells, Kc] int32 index into image_pos (padding -> last)
    image_pos: np.ndarray  # [n_images + 1, 3] float32 Å template images (last: far away)
    image_atom: np.ndarray  # [n_images + 1] int32 template atom of each image


def _periodic_axes(system: System) -> np.ndarray:
    if system.mode == "cluster":
        return np.zeros(3, bool)
    return np.array([True, True, bool(system.pbc[2])])


def _template_images(system: System, cutoff: float, pad: float) -> tuple[np.ndarray, np.ndarray]:
    """All template images that can lie within cutoff + pad of the cell's unit region."""
    periodic = _periodic_axes(system)
    pos = np.asarray(system.template_positions, float)
    cell = np.asarray(system.cell, float)
    frac = np.linalg.solve(cell.T, pos.T).T if len(pos) else np.zeros((0, 3))
    reach = np.ceil((cutoff + pad) / _lattice_heights(cell) + np.abs(frac).max(initial=0.0)) + 1
    shifts = _image_shifts(cell, periodic, reach)
    image_pos = (pos[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    image_atom = np.tile(np.arange(len(pos)), len(shifts))
    return image_pos, image_atom


def template_classes(system: System, tol: float = 1e-4) -> np.ndarray:
    """[Nt] index of a representative of each template atom's translation class.

    A translation t (a difference of two template positions) is a symmetry when it maps
    every template atom onto a template atom of the same element, modulo the cell along
    periodic axes (within tol Å). Atoms related by symmetries see the same template
    neighbourhood, so the template-only pass gives them identical features. The
    representative of a class is its lowest index.
    """
    pos = np.asarray(system.template_positions, float)
    z = np.asarray(system.template_numbers)
    n = len(pos)
    rep = np.arange(n)
    periodic = _periodic_axes(system)
    if n == 0 or not periodic.any():
        return rep
    cell = np.asarray(system.cell, float)
    inv = np.linalg.inv(cell)

    def wrap(d):  # minimum-image displacement along periodic axes
        frac = d @ inv
        frac = frac - np.round(frac) * periodic
        return frac @ cell

    for j in range(1, n):
        if z[j] != z[0] or rep[j] == rep[0]:
            continue  # 0 -> j is then a product of symmetries already found
        t = pos[j] - pos[0]
        dist = np.linalg.norm(wrap((pos + t)[:, None, :] - pos[None, :, :]), axis=-1)
        image = np.argmin(dist, axis=1)
        if np.all(dist[np.arange(n), image] < tol) and np.all(z[image] == z):
            # t is a symmetry: every atom i lies in the class of its image i + t.
            for i in range(n):
                a, b = rep[i], rep[image[i]]
                if a != b:
                    rep[rep == max(a, b)] = min(a, b)
    return rep


def template_graph(system: System, cutoff: float) -> TemplateGraph:
    """Template-only neighbour list (periodic images per the system's cell and pbc)."""
    pos = np.asarray(system.template_positions, float)
    n_t = len(pos)
    image_pos, image_atom = _template_images(system, cutoff, 0.0)
    d = image_pos[None, :, :] - pos[:, None, :]  # [Nt, n_images, 3]
    dist = np.linalg.norm(d, axis=-1)
    keep = (dist < cutoff) & (dist > 1e-8)  # drops each atom's own zero-shift copy
    k = max(1, int(keep.sum(axis=1).max(initial=0)))
    nbr = np.zeros((n_t, k), np.int32)
    r = np.zeros((n_t, k, 3), np.float32)
    r[..., 0] = _FAR
    for i in range(n_t):
        (js,) = np.nonzero(keep[i])
        nbr[i, : len(js)] = image_atom[js]
        r[i, : len(js)] = d[i, js]
    return TemplateGraph(nbr, r)


def _dist_to_segments(q: np.ndarray, starts: list, edges: list) -> np.ndarray:
    """Min distance from 2D points q [..., 2] to segments start + [0, 1] * edge."""
    out = None
    for s0, e in zip(starts, edges, strict=True):
        rel = q - s0
        u = np.clip(rel @ e / (e @ e), 0.0, 1.0)
        dist = np.linalg.norm(rel - u[..., None] * e, axis=-1)
        out = dist if out is None else np.minimum(out, dist)
    return out


def _interval_dist(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """[n_cells, n_points] distance from points x to the intervals [lo, hi]."""
    return np.maximum(np.maximum(lo[:, None] - x[None, :], x[None, :] - hi[:, None]), 0.0)


def template_grid(
    system: System, cutoff: float, spacing: float, margin: float
) -> TemplateGrid | None:
    """Grid cells over the box (+ margin) with every template image within the cutoff.

    A template image is listed for a cell when its exact distance to the cell (a
    parallelogram in x/y times an interval in z, or an axis-aligned box in cluster mode)
    is below cutoff + `_GRID_TOL`, so any point of the cell finds all its neighbours.
    """
    if system.n_template == 0:
        return None
    image_pos, image_atom = _template_images(system, cutoff, 2.0 * spacing + margin)
    cell = np.asarray(system.cell, float)
    reach = cutoff + _GRID_TOL
    if system.mode == "surface":
        ab = cell[:2, :2]
        n_u = max(1, math.ceil(np.linalg.norm(cell[0]) / spacing))
        n_v = max(1, math.ceil(np.linalg.norm(cell[1]) / spacing))
        z_lo = float(system.box_lo[2]) - margin
        z_hi = float(system.box_hi[2]) + margin
        n_z = max(1, math.ceil((z_hi - z_lo) / spacing))
        dz = (z_hi - z_lo) / n_z
        lo = np.array([0.0, 0.0, z_lo])
        step = np.array([1.0 / n_u, 1.0 / n_v, dz])
        shape = (n_u, n_v, n_z)
        # z distance per z-slab, then x/y distance to each cell's parallelogram.
        z0 = z_lo + dz * np.arange(n_z)
        d_z = _interval_dist(image_pos[:, 2], z0, z0 + dz)  # [n_z, n_img]
        ea, eb = ab[0] / n_u, ab[1] / n_v
        # Prune images far from the whole grid region before the per-cell work.
        region = _parallelogram_dist(image_pos[:, :2], np.zeros(2), ab[0], ab[1])
        z_all = _interval_dist(image_pos[:, 2], np.array([z_lo]), np.array([z_hi]))[0]
        near = np.hypot(region, z_all) < reach
        image_pos, image_atom, d_z = image_pos[near], image_atom[near], d_z[:, near]
        iu, iv = np.meshgrid(np.arange(n_u), np.arange(n_v), indexing="ij")
        origins = iu.reshape(-1, 1) * ea + iv.reshape(-1, 1) * eb  # [n_u*n_v, 2]
        d_xy = np.stack(
            [_parallelogram_dist(image_pos[:, :2], o, ea, eb) for o in origins]
        )  # [n_u*n_v, n_img]
        within = d_xy[:, None, :] ** 2 + d_z[None, :, :] ** 2 < reach**2
    else:
        box_lo = np.asarray(system.box_lo, float) - margin
        box_hi = np.asarray(system.box_hi, float) + margin
        shape = tuple(
            max(1, math.ceil((h - l) / spacing)) for l, h in zip(box_lo, box_hi, strict=True)
        )
        step = (box_hi - box_lo) / np.array(shape)
        lo = box_lo
        d_ax = []
        for ax in range(3):
            c0 = lo[ax] + step[ax] * np.arange(shape[ax])
            d_ax.append(_interval_dist(image_pos[:, ax], c0, c0 + step[ax]))
        d2 = (
            d_ax[0][:, None, None, :] ** 2
            + d_ax[1][None, :, None, :] ** 2
            + d_ax[2][None, None, :, :] ** 2
        )
        within = d2 < reach**2
    within = within.reshape(-1, len(image_pos))  # [n_cells, n_img], C order (u, v, z)
    used = within.any(axis=0)
    image_pos, image_atom, within = image_pos[used], image_atom[used], within[:, used]
    n_img = len(image_pos)
    k_c = max(1, int(within.sum(axis=1).max(initial=0)))
    cand = np.full((within.shape[0], k_c), n_img, np.int32)
    for c in range(within.shape[0]):
        (js,) = np.nonzero(within[c])
        cand[c, : len(js)] = js
    far = np.full((1, 3), _FAR)
    return TemplateGrid(
        lo=lo.astype(np.float32),
        step=step.astype(np.float32),
        shape=shape,
        cand_image=cand,
        image_pos=np.concatenate([image_pos, far]).astype(np.float32),
        image_atom=np.concatenate([image_atom, [0]]).astype(np.int32),
    )


def _parallelogram_dist(p: np.ndarray, o: np.ndarray, ea: np.ndarray, eb: np.ndarray):
    """Distance (Å) from 2D points p [n, 2] to the parallelogram o + [0,1] ea + [0,1] eb."""
    q = p - o
    st = q @ np.linalg.inv(np.stack([ea, eb]))
    inside = np.all((st >= 0.0) & (st <= 1.0), axis=-1)
    edge = _dist_to_segments(q, [np.zeros(2), eb, np.zeros(2), ea], [ea, ea, eb, eb])
    return np.where(inside, 0.0, edge)


def mobile_image_shifts(system: System, cutoff: float) -> np.ndarray:
    """[S, 3] Å lattice shifts covering every mobile-mobile image within the cutoff.

    Displacements are first wrapped to fractional coordinates in [-1/2, 1/2] along
    periodic axes; an image n is then within the cutoff only if |n| <= 1/2 + cutoff / h
    (h the distance between cell faces), so S = 1 for cells wider than twice the cutoff.
    """
    periodic = _periodic_axes(system)
    cell = np.asarray(system.cell, float)
    n_max = np.floor(0.5 + cutoff / _lattice_heights(cell))
    return _image_shifts(cell, periodic, n_max)


# ------------------------------------------------------------------------ public model


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
        self.graph = template_graph(system, config.cutoff) if system.n_template else None
        self.grid = template_grid(system, config.cutoff, config.grid_spacing, config.grid_margin)
        self.shifts = mobile_image_shifts(system, config.cutoff).astype(np.float32)
        self._periodic = _periodic_axes(system)
        cell = np.asarray(system.cell, float)
        self._cell = cell.astype(np.float32)
        self._inv_cell = np.linalg.inv(cell).astype(np.float32)
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
                chan, unit = _radial(jnp.asarray(g.r), config.n_rbf, config.cutoff)
            rows = self.template_rows
            nbr = atom_row[g.nbr[rows]]
            self._t_graph = (nbr, np.asarray(chan)[rows], np.asarray(unit)[rows])
            self._image_row = atom_row[self.grid.image_atom]
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

    def context(self, params: Params) -> dict[str, jax.Array]:
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
        if self._periodic.any():
            frac = d @ jnp.asarray(self._inv_cell)
            frac = frac - jnp.round(frac) * jnp.asarray(self._periodic, _F32)
            d = frac @ jnp.asarray(self._cell)
        shifts = jnp.asarray(self.shifts)
        r = d[:, :, :, None, :] + shifts  # [B, M, M, S, 3]
        is_self = np.eye(m, dtype=bool)[:, :, None] & (np.arange(len(self.shifts)) == 0)
        r = jnp.where(is_self[None, ..., None], _FAR, r)
        return r.reshape(batch, m, m * len(self.shifts), 3)

    def apply(self, params: Params, ctx: dict[str, jax.Array], x: jax.Array, t: jax.Array):
        """Scores [B, M, 3] (float32) for mobile positions x [B, M, 3] Å at times t [B].

        Unbatched x [M, 3] with scalar t gives [M, 3].
        """
        return self._batched(PaiNNScore.mobile, params, ctx, x, t)

    def representation(
        self, params: Params, ctx: dict[str, jax.Array], x: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Final mobile features, scalars [B, M, F] and vectors [B, M, 3, F].

        The hook for a force head (DESIGN.md, FFG): a second `GatedEquivariantHead` on
        these features. It belongs in `PaiNNScore` (so that its parameters live in the
        same pytree) next to `score_head`.
        """
        return self._batched(PaiNNScore.representation, params, ctx, x, None)

    def _batched(self, method, params, ctx, x, t):
        x = jnp.asarray(x, _F32)
        if x.ndim == 2:
            t1 = None if t is None else jnp.reshape(jnp.asarray(t, _F32), (1,))
            return jax.tree.map(lambda a: a[0], self._batched(method, params, ctx, x[None], t1))
        if t is not None:
            t = jnp.broadcast_to(jnp.asarray(t, _F32), x.shape[:1])
        return self._run(method, params, ctx, x, t)

    def _run(self, method, params, ctx, x, t):
        cand, r_t = (None, None) if self.grid is None else self._template_neighbours(x)
        r_m = self._mobile_vectors(x)
        args = (ctx, cand, r_t, r_m, len(self.shifts))
        args += (self.config.batch_chunk,) if t is None else (t, self.config.batch_chunk)
        return self.net.apply({"params": params}, *args, method=method)

    def __call__(self, params: Params, x: jax.Array, t: jax.Array) -> jax.Array:
        return self.apply(params, self.context(params), x, t)


@functools.partial(jax.jit, static_argnums=0)
def _init_params(net: PaiNNScore, key: jax.Array) -> Params:
    return net.init(key, method=PaiNNScore.init_all)["params"]


def score_all_atoms(score: jax.Array, system: System) -> jax.Array:
    """[..., M, 3] mobile scores -> [..., Nt + M, 3] with zeros on the (fixed) template."""
    pad = [(0, 0)] * (score.ndim - 2) + [(system.n_template, 0), (0, 0)]
    return jnp.pad(score, pad)


def count_params(params: Params) -> int:
    return int(sum(np.size(p) for p in jax.tree_util.tree_leaves(params)))
