"""The message kernels of the score model: one message form with a hand-written gradient.

Every message sum in the network has one form. Atom a receives from K neighbours
with radial channels c [A, K, R1] (see `layers.radial`), unit vectors u [A, K, 3] and
indices n [A, K] into per-atom tables of the senders' features:
  ds[a]    = sum_k W_q(c_ak) * T_q[n_ak]
  dv[a, x] = sum_k W_R(c_ak) * T_R[n_ak] * u_akx + W_mu(c_ak) * T_vm[n_ak, x]
with W_p = c @ kernel_p, T_q and T_R the q and R parts of the senders' interatomic
context and T_vm its mu part times the senders' vectors. Autodiff of this form makes
XLA on CPU materialise broadcast per-pair products several times over, so the
gradient is written out: per-pair filter cotangents, one matrix product per kernel
and one scatter-add per table.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class SenderTables(NamedTuple):
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
def messages(chan, unit, nbr, kq, kr, km, tab):
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

    d_tab = SenderTables(
        q=seg(gs[:, None, :] * wq),
        r=seg(y * wr),
        vm=jnp.stack([seg(wm * gv[:, None, x]) for x in range(3)]),
    )
    d_nbr = np.zeros(nbr.shape, dtype=jax.dtypes.float0)
    return d_chan, d_unit, d_nbr, dkq, dkr, dkm, d_tab


messages.defvjp(_messages_fwd, _messages_bwd)


def row_messages(chan, unit, nbr, kq, kr, km, tab):
    """`messages` with the sums over neighbours taken per sender row first.

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
