"""The score network's Flax layers: PaiNN blocks, the gated equivariant head, the radial
basis, and `PaiNNScore`, which runs them on precomputed geometry (`ScoreModel` builds it)."""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from godiff_jax.model.messages import SenderTables, messages, row_messages

NUM_ELEMENTS = 101  # embedding rows: atomic numbers 0..100, shared by every system
FAR = 1.0e3  # Å: padded neighbours sit this far away, so their rbf and cutoff are 0
_F32 = jnp.float32
_NORM_EPS = 1e-8  # inside the sqrt of feature-vector norms: finite gradients at zero
_DIST_EPS = 1e-10  # Å^2 inside the sqrt of distances: coinciding atoms stay finite


class TwoWay(NamedTuple):
    """Geometry of two-way template messages (`ScoreModelConfig.template_receives`): the R
    template atoms within reach of the box receive messages, per structure.

    numbers [R] and rows [R] (their template-pass rows); nbr [R, Kt] their template
    neighbours as rows of [the T template-pass rows; the R receivers], chan [R, Kt, R1] and
    unit [R, Kt, 3] (constants); r_mr [B, M, R * S, 3] Å vectors from each mobile atom to
    every receiver image and r_rm [B, R, M * S, 3] from each receiver to every mobile image.
    """

    numbers: jax.Array
    rows: jax.Array
    nbr: jax.Array
    chan: jax.Array
    unit: jax.Array
    r_mr: jax.Array
    r_rm: jax.Array


class ScoreContext(NamedTuple):
    """The template-only pass (`PaiNNScore.context`): what every structure shares.

    s0 [M, F] the mobile atoms' embedding; q, r [T, nb * F] and vm [3, T, nb * F] the
    template sender tables of every block, blocks concatenated along the feature axis
    (None without a template).
    """

    s0: jax.Array
    q: jax.Array | None = None
    r: jax.Array | None = None
    vm: jax.Array | None = None


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


def radial(r: jax.Array, n_rbf: int, cutoff: float) -> tuple[jax.Array, jax.Array]:
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
    # Template messages summed per template row before the filters (`row_messages`);
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

    def _tables(self, b: int, s: jax.Array, v: jax.Array) -> SenderTables:
        """Sender tables of block b from scalars s [N, F] and vectors v [N, 3, F]."""
        f = self.features
        x = self.interactions[b](s)
        return SenderTables(
            q=x[:, :f], r=x[:, f : 2 * f], vm=x[None, :, 2 * f :] * v.transpose(1, 0, 2)
        )

    def context(
        self,
        t_numbers: jax.Array,
        m_numbers: jax.Array,
        nbr: jax.Array,
        chan: jax.Array,
        unit: jax.Array,
    ) -> ScoreContext:
        """Template-only pass.

        Over T template rows (one atom per translation class, see `template_classes`):
        t_numbers [T], m_numbers [M], nbr [T, Kt] neighbours as row indices, chan
        [T, Kt, R1] and unit [T, Kt, 3] their radial channels and unit vectors (see
        `radial`; constants of the template). Returns the mobile embedding
        s0 [M, F] and the template sender tables of every block, blocks concatenated
        along the feature axis: q, r [T, nb * F] and vm [3, T, nb * F].
        """
        nb = self.n_blocks
        s0 = self.embedding(m_numbers)
        n_t = t_numbers.shape[0]
        if n_t == 0:
            return ScoreContext(s0)
        s = self.embedding(t_numbers)
        v = jnp.zeros((n_t, 3, self.features), _F32)
        tables = []
        for b in range(nb):
            tab = self._tables(b, s, v)
            tables.append(tab)
            if b == nb - 1:
                break  # the last block's template output feeds nothing
            ds, dv = messages(chan, unit, nbr, *self._kernels(slice(b, b + 1)), tab)
            s, v = self.mixings[b](s + ds, v + dv)
        return ScoreContext(
            s0=s0,
            q=jnp.concatenate([t.q for t in tables], axis=-1),
            r=jnp.concatenate([t.r for t in tables], axis=-1),
            vm=jnp.concatenate([t.vm for t in tables], axis=-1),
        )

    def _templatemessages(self, ctx, cand, r_t, chunk_atoms: int):
        """Template messages of all blocks, ds [A, nb * F] and dv [A, 3, nb * F]."""
        tab = SenderTables(ctx.q, ctx.r, ctx.vm)
        kernels = self._kernels(slice(None))
        k_c = cand.shape[-1]
        cand, r_t = cand.reshape(-1, k_c), r_t.astype(_F32).reshape(-1, k_c, 3)

        def run(nbr, r):
            chan, unit = radial(r, self.n_rbf, self.cutoff)
            if self.template_row_sums:
                return row_messages(chan, unit, nbr, *kernels, tab)
            return messages(chan, unit, nbr, *kernels, tab)

        a = cand.shape[0]
        if not chunk_atoms or a <= chunk_atoms:
            return run(cand, r_t)
        n = -(-a // chunk_atoms)
        pad = n * chunk_atoms - a  # padded atoms see only far-away neighbours
        cand = jnp.pad(cand, ((0, pad), (0, 0)))
        r_t = jnp.pad(r_t, ((0, pad), (0, 0), (0, 0)), constant_values=FAR)
        shape = (n, chunk_atoms, k_c)
        ds, dv = jax.lax.map(lambda nr: run(*nr), (cand.reshape(shape), r_t.reshape(*shape, 3)))
        return ds.reshape(n * chunk_atoms, -1)[:a], dv.reshape(n * chunk_atoms, 3, -1)[:a]

    def representation(
        self,
        ctx: ScoreContext,
        cand: jax.Array | None,
        r_t: jax.Array | None,
        r_m: jax.Array,
        n_images: int,
        chunk: int = 0,
        two_way: TwoWay | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Final mobile features s [B, M, F], v [B, M, 3, F].

        cand [B, M, Kc] template indices of each mobile atom's candidate neighbours and
        r_t [B, M, Kc, 3] Å the vectors to them (None without a template); r_m
        [B, M, M * S, 3] Å vectors to the S periodic images of every mobile atom, j-major
        (the self pair with zero shift placed far away). The template messages run in
        chunks of `chunk` structures (0: all at once), see `ScoreModelConfig`.
        `two_way`: the receiving template atoms of two-way messages (`TwoWay`).
        """
        f, nb = self.features, self.n_blocks
        batch, m = r_m.shape[0], r_m.shape[1]
        s = jnp.broadcast_to(ctx.s0, (batch, m, f)).reshape(batch * m, f)
        v = jnp.zeros((batch * m, 3, f), _F32)
        if cand is not None:
            # Template messages of every block at once: they ignore the mobile features.
            ds_t, dv_t = self._templatemessages(ctx, cand, r_t, chunk * m)
        chan, unit = radial(r_m.astype(_F32).reshape(batch * m, -1, 3), self.n_rbf, self.cutoff)
        # Mobile neighbour j (image s) of atom (b, i) is row b * M + j of the tables.
        nbr = _image_rows(batch, m, m, n_images)
        relay = None if two_way is None else self._relay_start(two_way, batch, m, n_images)
        for b in range(nb):
            tab = self._tables(b, s, v)
            kernels = self._kernels(slice(b, b + 1))
            ds, dv = messages(chan, unit, nbr, *kernels, tab)
            if cand is not None:
                blk = slice(b * f, (b + 1) * f)
                ds = ds + ds_t[:, blk]
                dv = dv + dv_t[..., blk]
            if relay is not None:
                (dds, ddv), relay = self._relay_block(b, ctx, tab, relay, kernels, batch)
                ds, dv = ds + dds, dv + ddv
            s, v = self.mixings[b](s + ds, v + dv)
        return s.reshape(batch, m, f), v.reshape(batch, m, 3, f)

    def _relay_start(self, tw: TwoWay, batch: int, m: int, n_images: int) -> dict:
        """The receivers' starting features and the per-structure graphs of two-way
        messages: mobile <- receivers, receivers <- template and receivers <- mobile."""
        f, n_r = self.features, tw.numbers.shape[0]
        s_r = jnp.broadcast_to(self.embedding(tw.numbers), (batch, n_r, f)).reshape(-1, f)
        return {
            "s": s_r,
            "v": jnp.zeros((batch * n_r, 3, f), _F32),
            "mr": (
                *radial(tw.r_mr.astype(_F32).reshape(batch * m, -1, 3), self.n_rbf, self.cutoff),
                _image_rows(batch, m, n_r, n_images),
            ),
            "rm": (
                *radial(tw.r_rm.astype(_F32).reshape(batch * n_r, -1, 3), self.n_rbf, self.cutoff),
                _image_rows(batch, n_r, m, n_images),
            ),
            "rt": (tw.chan, tw.unit, tw.nbr),
            "rows": tw.rows,
            "n_r": n_r,
        }

    def _relay_block(
        self, b: int, ctx: ScoreContext, tab: SenderTables, relay: dict, kernels, batch
    ):
        """Block b of two-way messages: (what the mobile atoms receive beyond the
        template-only tables, the receivers' state after the block)."""
        f, n_r, rows = self.features, relay["n_r"], relay["rows"]
        blk = slice(b * f, (b + 1) * f)
        tab_r = self._tables(b, relay["s"], relay["v"])
        ctx_q, ctx_r, ctx_vm = ctx.q[:, blk], ctx.r[:, blk], ctx.vm[..., blk]
        # Messages are linear in the senders' tables: the mobile atoms already have the
        # template-only ones, so they get the receivers' change on top.
        tile = lambda a: jnp.broadcast_to(a, (batch, *a.shape)).reshape(-1, a.shape[-1])  # noqa: E731
        delta = SenderTables(
            tab_r.q - tile(ctx_q[rows]),
            tab_r.r - tile(ctx_r[rows]),
            tab_r.vm - jnp.stack([tile(ctx_vm[x][rows]) for x in range(3)]),
        )
        chan, unit, nbr = relay["mr"]
        to_mobile = messages(chan, unit, nbr, *kernels, delta)
        if b == self.n_blocks - 1:
            return to_mobile, relay  # the receivers' last update would feed nothing

        # Receivers hear the template (template-pass rows, then this structure's
        # receivers): one geometry for every structure, so its filters are computed once.
        def per_structure(c, t):
            return jnp.concatenate([jnp.broadcast_to(c, (batch, *c.shape)), t], axis=1)

        both = SenderTables(
            per_structure(ctx_q, tab_r.q.reshape(batch, n_r, f)),
            per_structure(ctx_r, tab_r.r.reshape(batch, n_r, f)),
            jnp.stack(
                [per_structure(ctx_vm[x], tab_r.vm[x].reshape(batch, n_r, f)) for x in range(3)],
                axis=1,
            ),
        )
        chan, unit, nbr_rt = relay["rt"]
        ds, dv = jax.vmap(lambda tb: messages(chan, unit, nbr_rt, *kernels, SenderTables(*tb)))(
            both
        )
        ds, dv = ds.reshape(batch * n_r, f), dv.reshape(batch * n_r, 3, f)
        chan, unit, nbr = relay["rm"]
        ds2, dv2 = messages(chan, unit, nbr, *kernels, tab)
        s_r, v_r = self.mixings[b](relay["s"] + ds + ds2, relay["v"] + dv + dv2)
        return to_mobile, {**relay, "s": s_r, "v": v_r}

    def score(self, s: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
        """Gated equivariant head: s [B, M, F], v [B, M, 3, F], t [B] -> [B, M, 3]."""
        tf = jnp.stack([jnp.sin(math.pi * t), jnp.cos(math.pi * t)], axis=-1)
        tf = jnp.broadcast_to(tf[:, None, :], (*s.shape[:-1], 2))
        return self.score_head(jnp.concatenate([s, tf], axis=-1), v)

    def mobile(self, ctx, cand, r_t, r_m, n_images: int, t: jax.Array, chunk=0, two_way=None):
        s, v = self.representation(ctx, cand, r_t, r_m, n_images, chunk, two_way)
        return self.score(s, v, t)

    def init_all(self) -> jax.Array:
        """Touch every layer once (used by `init`); one template and one mobile atom."""
        z = jnp.array([1], jnp.int32)
        r = jnp.full((1, 1, 1, 3), 2.0, _F32)
        ctx = self.context(
            z, z, jnp.zeros((1, 1), jnp.int32), *radial(r[0], self.n_rbf, self.cutoff)
        )

        return self.mobile(ctx, jnp.zeros((1, 1, 1), jnp.int32), r, r, 1, jnp.zeros(1))


def _image_rows(batch: int, n_recv: int, n_send: int, n_images: int) -> jax.Array:
    """[batch * n_recv, n_send * S] table rows of the senders: sender j (image s) of
    structure b is row b * n_send + j, j-major."""
    rows = jnp.arange(batch)[:, None, None] * n_send + jnp.arange(n_send).repeat(n_images)
    return jnp.broadcast_to(rows, (batch, n_recv, n_send * n_images)).reshape(batch * n_recv, -1)
