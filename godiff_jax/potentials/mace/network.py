"""The MACE network (ScaleShiftMACE with RealAgnosticResidualInteractionBlock) as a pure
function of a graph: node species, edges (sender, receiver, vector) and an edge mask.

Conventions follow mace-torch on e3nn 0.4.4, so that converted weights give its numbers:

- features are a dict {l: [n, C, 2l+1]} (every irrep has parity (-1)^l and C channels,
  as in the MACE-MP-0 models; `convert.py` refuses others);
- an edge vector points from the sender (an image of atom j) to the receiver i, and its
  spherical harmonics are e3nn's (normalised, "component" normalisation);
- e3nn normalises a linear map by 1/sqrt(fan-in) over the paths into each output, a
  tensor product path by sqrt(2 l_out + 1) over its fan-in, the radial MLP's layers by
  1/sqrt(width) and its activations by the second-moment constant e3nn measured when the
  model was built (stored in the file, as e3nn draws it by Monte Carlo);
- the Clebsch-Gordan coefficients are e3nn 0.4.4's `wigner_3j`, which for a few triples
  has the opposite sign to e3nn-jax's `clebsch_gordan` (`_TORCH_SIGN`);
- the symmetric contraction evaluates mace-torch's U tensors (from the file) by Horner's
  rule on the last index, exactly its einsum chain.

Masked edges (padding) contribute exactly zero: their radial weights are zeroed before
the tensor product, and their vectors are replaced by a dummy before any square root.
"""

from __future__ import annotations

import functools
import math

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np

from godiff_jax.potentials.mace.model_file import MaceModel, dense_u

# Triples (l1, l2, l3) where e3nn 0.4.4's wigner_3j = -e3nn_jax.clebsch_gordan (checked
# for every l <= 3 against e3nn in tests/test_mace.py's live test).
_TORCH_SIGN = {(1, 2, 2), (2, 1, 2), (2, 2, 1), (1, 3, 3), (3, 1, 3), (3, 3, 1)}


@functools.cache
def wigner_3j(l1: int, l2: int, l3: int) -> np.ndarray:
    """e3nn 0.4.4's real Clebsch-Gordan tensor [2l1+1, 2l2+1, 2l3+1] (Frobenius norm 1)."""
    cg = np.asarray(e3nn.clebsch_gordan(l1, l2, l3), dtype=float)
    return -cg if (l1, l2, l3) in _TORCH_SIGN else cg


def _bessel(model: MaceModel, r, dtype):
    w = jnp.asarray(model.params["bessel_weights"], dtype)
    prefactor = math.sqrt(2.0 / model.r_max)
    return prefactor * jnp.sin(w * r[:, None]) / r[:, None]


def _envelope(model: MaceModel, r):
    p = float(model.config["cutoff_p"])
    u = r / model.r_max
    env = (
        1.0
        - (p + 1.0) * (p + 2.0) / 2.0 * u**p
        + p * (p + 2.0) * u ** (p + 1)
        - p * (p + 1.0) / 2.0 * u ** (p + 2)
    )
    return env * (r < model.r_max)


def _mlp(params, prefix: str, n_layers: int, cst: float, x, dtype):
    for k in range(n_layers):
        w = jnp.asarray(params[f"{prefix}.{k}"], dtype)
        x = x @ w / math.sqrt(w.shape[0])
        if k < n_layers - 1:
            x = jax.nn.silu(x) * cst
    return x


def _lin(params, name: str, x, norm: float, dtype):
    return jnp.einsum("nci,cd->ndi", x, jnp.asarray(params[name], dtype)) * norm


@functools.lru_cache(maxsize=256)
def _coupled(model: MaceModel, name: str, corr: int, element: int) -> tuple[np.ndarray, ...]:
    """Host float64: sum_k U_nu[..., k] w_nu[element, k, c] -> [C, D, 16 (nu times)], nu=1..corr.

    Done in numpy once: as constants inside jit XLA would fold them, slowly, at every compile.
    """
    shapes = model.config["u_shapes"][name]
    out = []
    for nu in range(1, corr + 1):
        u = dense_u(model.params, f"{name}.U{nu}", shapes[nu - 1])
        w = np.asarray(model.params[f"{name}.w{nu}"], float)[element]
        out.append(np.einsum("...k,kc->c...", u, w))
    return tuple(out)


def _contraction(uw: tuple[np.ndarray, ...], x):
    """One output irrep of the symmetric contraction for nodes of one element, by Horner's
    rule on the last index: uw from `_coupled`, x [b, C, 16] -> [b, C, D]."""
    t = [jnp.asarray(a, x.dtype) for a in uw]
    out = jnp.einsum("c...i,bci->bc...", t[-1], x)
    for a in reversed(t[:-1]):
        out = jnp.einsum("bc...i,bci->bc...", a[None] + out, x)
    return out


def node_energies(
    model: MaceModel,
    species: np.ndarray,
    senders: jax.Array,
    receivers: jax.Array,
    vectors: jax.Array,
    mask: jax.Array,
) -> jax.Array:
    """[N] interaction energy per node (eV, scaled and shifted; without the E0s).

    species: [N] model element indices, static (numpy: the contraction runs once per
    element present, on its nodes) or traced (every element of the model on every node,
    selected); senders, receivers: [E] node indices;
    vectors: [E, 3] Å, receiver minus sender image; mask: [E] bool, False on padding.
    """
    cfg, p = model.config, model.params
    dtype = vectors.dtype
    static = isinstance(species, np.ndarray)
    n, c = species.shape[0], int(cfg["channels"])
    n_el = len(cfg["atomic_numbers"])
    lmax = int(cfg["max_ell"])

    # ---- edges: geometry, spherical harmonics, radial basis ------------------------
    dummy = jnp.asarray([2.0 * model.r_max, 0.0, 0.0], dtype)
    v = jnp.where(mask[:, None], vectors, dummy)
    r = jnp.sqrt(jnp.sum(v * v, axis=-1))
    sh_irreps = "+".join(f"{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))
    sh = e3nn.spherical_harmonics(sh_irreps, v, normalize=True, normalization="component").array
    ys = {l: sh[:, l * l : (l + 1) ** 2] for l in range(lmax + 1)}
    cutoff = _envelope(model, r) * mask
    radial = _bessel(model, r, dtype)
    if cfg["apply_cutoff"]:
        radial = radial * cutoff[:, None]

    # ---- nodes ------------------------------------------------------------------------
    if static:
        groups = [(e, np.flatnonzero(species == e)) for e in np.unique(species)]
    else:
        groups = [(e, None) for e in range(n_el)]
    emb = jnp.asarray(p["embedding"], dtype)[species] / math.sqrt(n_el)
    feats = {0: emb[:, :, None]}
    total = jnp.zeros(n, dtype)
    for i in range(int(cfg["num_interactions"])):
        pre = f"int{i}"
        out_ls = cfg["hidden_ls"][i]
        # Residual: the species-dependent skip of the incoming features.
        sc = {}
        for l in out_ls:
            if l in feats:
                w = p[f"{pre}.skip.{l}"]
                w = np.asarray(w)[:, species, :] if static else jnp.asarray(w)[:, species, :]
                w = jnp.asarray(w, dtype)  # [C, N, C]
                sc[l] = jnp.einsum("nci,cnd->ndi", feats[l], w) / math.sqrt(c * n_el)
        up = {
            l: _lin(p, f"{pre}.linear_up.{l}", x, 1 / math.sqrt(c), dtype) for l, x in feats.items()
        }
        tp_w = _mlp(
            p, f"{pre}.radial", int(cfg["radial_layers"]), cfg["radial_cst"][i], radial, dtype
        )
        if not cfg["apply_cutoff"]:
            tp_w = tp_w * cutoff[:, None]
        tp_w = tp_w * mask[:, None]
        paths = cfg["conv_paths"][i]
        parts = []
        for j, (l1, l2, l3) in enumerate(paths):
            cg = jnp.asarray(wigner_3j(l1, l2, l3), dtype) * math.sqrt(2 * l3 + 1)
            xs = up[l1][senders]  # [E, C, 2l1+1]
            m = jnp.einsum("eci,ej,ijk->eck", xs, ys[l2], cg)
            parts.append(m * tp_w[:, j * c : (j + 1) * c, None])
        msg = jax.ops.segment_sum(jnp.concatenate(parts, axis=-1), receivers, num_segments=n)
        # Linear from the tensor product's outputs (one entry per path) to one per l.
        message, start = {}, 0
        fan = {l: sum(1 for q in paths if q[2] == l) for l in range(lmax + 1)}
        for j, (_, _, l3) in enumerate(paths):
            part = msg[:, :, start : start + 2 * l3 + 1]
            start += 2 * l3 + 1
            y = _lin(p, f"{pre}.linear.{j}", part, 1 / math.sqrt(fan[l3] * c), dtype)
            message[l3] = message[l3] + y if l3 in message else y
        avg = float(cfg["avg_num_neighbors"][i])
        x16 = jnp.concatenate([message[l] / avg for l in range(lmax + 1)], axis=-1)
        # Symmetric contraction, per output irrep, nodes grouped by element.
        corr = int(cfg["correlation"][i])
        new = {}
        for l_out in out_ls:
            name = f"prod{i}.L{l_out}"
            res = jnp.zeros((n, c, 2 * l_out + 1), dtype)
            for e, idx in groups:
                uw = _coupled(model, name, corr, int(e))
                if idx is None:
                    res = jnp.where((species == e)[:, None, None], _contraction(uw, x16), res)
                elif len(idx) == n:
                    res = _contraction(uw, x16)
                else:
                    res = res.at[idx].set(_contraction(uw, x16[idx]))
            new[l_out] = _lin(p, f"prod{i}.linear.{l_out}", res, 1 / math.sqrt(c), dtype)
            if l_out in sc:
                new[l_out] = new[l_out] + sc[l_out]
        feats = new
        # Readout of this layer's scalars.
        s = feats[0][:, :, 0]
        if i < int(cfg["num_interactions"]) - 1:
            w = jnp.asarray(p[f"readout{i}.linear"], dtype)
            e_i = (s @ w)[:, 0] / math.sqrt(c)
        else:
            w1 = jnp.asarray(p[f"readout{i}.linear_1"], dtype)
            w2 = jnp.asarray(p[f"readout{i}.linear_2"], dtype)
            h = jax.nn.silu(s @ w1 / math.sqrt(c)) * cfg["readout_cst"]
            e_i = (h @ w2)[:, 0] / math.sqrt(w2.shape[0])
        total = total + e_i
    return cfg["scale"] * total + cfg["shift"]
