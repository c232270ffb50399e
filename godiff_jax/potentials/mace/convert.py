"""mace-torch model -> `MaceModel` (needs the `mace` extra: torch and mace-torch).

The one place in the package that reads a torch file. A mace-torch `.model` file is a
pickled `torch.nn.Module`, so reading it can run code that whoever wrote it put there:
it is read only when the user asks for it (`godiff convert-mace MODEL OUT`), and
`torch.load(..., weights_only=True)` is tried first (it loads a plain state dict, which
is not enough to rebuild a model, so a module pickle then falls back to a full load).

Supported: ScaleShiftMACE / MACE with RealAgnosticResidualInteractionBlock everywhere, one
head, a Bessel radial basis with a polynomial cutoff, irreps of natural parity with one
channel count: the MACE-MP-0 small / medium / large architectures. Anything else is
refused with what differs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from godiff_jax.potentials.mace.model_file import (
    LAYOUT_VERSION,
    MaceModel,
    MaceModelError,
    sparse_u,
)


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy().copy()


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise MaceModelError(f"unsupported MACE model: {what}")


def _ls(irreps, channels: int) -> list[int]:
    out = []
    for mul, ir in irreps:
        _require(ir.p == (-1) ** ir.l, f"irrep {ir} has unnatural parity")
        _require(mul == channels, f"irreps {irreps} mix channel counts")
        out.append(int(ir.l))
    return out


def _split(linear, weight=None) -> list[tuple[Any, np.ndarray]]:
    """(instruction, weight block) of an e3nn Linear / TensorProduct, in its order."""
    w = _np(linear.weight if weight is None else weight).reshape(-1)
    out, start = [], 0
    for ins in linear.instructions:
        size = int(np.prod(ins.path_shape))
        out.append((ins, w[start : start + size].reshape(ins.path_shape)))
        start += size
    _require(start == w.size, "weights do not match the instructions")
    return out


def _cst(act) -> float:
    return 1.0 if getattr(act, "_is_id", False) else float(act.cst)


def _linear_by_l(linear, prefix: str, params: dict, channels: int) -> None:
    for ins, w in _split(linear):
        l_in, l_out = linear.irreps_in[ins.i_in].ir.l, linear.irreps_out[ins.i_out].ir.l
        _require(l_in == l_out and ins.i_in == ins.i_out, f"{prefix}: a linear that mixes irreps")
        _require(math.isclose(ins.path_weight, channels**-0.5), f"{prefix}: linear normalisation")
        params[f"{prefix}.{l_in}"] = w


def from_torch(model) -> MaceModel:
    """A `MaceModel` from a mace-torch ScaleShiftMACE / MACE module (float64 copies)."""
    import torch

    name = type(model).__name__
    _require(name in ("ScaleShiftMACE", "MACE"), f"model class {name}")
    _require(len(getattr(model, "heads", ["Default"])) == 1, "more than one head")
    for attr in ("pair_repulsion", "joint_embedding", "embedding_readout"):
        _require(not hasattr(model, attr), attr)
    _require(not getattr(model, "use_agnostic_product", False), "agnostic product")
    rad = model.radial_embedding
    _require(
        type(rad.bessel_fn).__name__ == "BesselBasis", f"radial {type(rad.bessel_fn).__name__}"
    )
    _require(not hasattr(rad, "distance_transform"), "distance transform")
    numbers = [int(z) for z in model.atomic_numbers]
    n_el = len(numbers)
    e0 = _np(model.atomic_energies_fn.atomic_energies).reshape(-1)
    _require(e0.size == n_el, "per-head atomic energies")
    channels = int(model.node_embedding.linear.irreps_out[0].mul)
    params: dict[str, np.ndarray] = {
        "atomic_energies": e0,
        "bessel_weights": _np(rad.bessel_fn.bessel_weights).reshape(-1),
        "embedding": _np(model.node_embedding.linear.weight).reshape(n_el, channels),
    }
    _require(
        math.isclose(float(rad.bessel_fn.prefactor), math.sqrt(2.0 / float(model.r_max))),
        "Bessel prefactor",
    )
    config: dict[str, Any] = {
        "layout_version": LAYOUT_VERSION,
        "source": name,
        "atomic_numbers": numbers,
        "r_max": float(model.r_max),
        "cutoff_p": int(rad.cutoff_fn.p),
        "apply_cutoff": bool(getattr(rad, "apply_cutoff", True)),
        "max_ell": int(model.spherical_harmonics.irreps_out.lmax),
        "num_interactions": len(model.interactions),
        "channels": channels,
        "hidden_ls": [],
        "correlation": [],
        "avg_num_neighbors": [],
        "radial_cst": [],
        "conv_paths": [],
        "u_shapes": {},
        "scale": 1.0,
        "shift": 0.0,
    }
    if name == "ScaleShiftMACE":
        config["scale"] = float(_np(model.scale_shift.scale).reshape(-1)[0])
        config["shift"] = float(_np(model.scale_shift.shift).reshape(-1)[0])
    _require(len(model.readouts) == len(model.interactions), "readout layout")
    n_int = len(model.interactions)
    for i, (inter, prod) in enumerate(zip(model.interactions, model.products, strict=True)):
        pre = f"int{i}"
        kind = type(inter).__name__
        _require(kind == "RealAgnosticResidualInteractionBlock", f"interaction {kind}")
        _require(not hasattr(inter, "conv_fusion"), "fused convolution")
        _ls(inter.node_feats_irreps, channels)
        _linear_by_l(inter.linear_up, f"{pre}.linear_up", params, channels)
        # Radial MLP
        layers = [m for m in inter.conv_tp_weights.children()]
        for k, layer in enumerate(layers):
            _require(layer.var_in == 1 and layer.var_out == 1, "radial MLP variances")
            params[f"{pre}.radial.{k}"] = _np(layer.weight)
        acts = [layer.act for layer in layers if layer.act is not None]
        _require(len(acts) == len(layers) - 1, "radial MLP activations")
        _require(all(getattr(a, "f", None) is torch.nn.functional.silu for a in acts), "radial act")
        config["radial_layers"] = len(layers)
        config["radial_cst"].append(_cst(acts[0]))
        # Convolution tensor product: one instruction per output entry, in output order.
        tp = inter.conv_tp
        paths = []
        for k, ins in enumerate(tp.instructions):
            _require(ins.connection_mode == "uvu" and ins.i_out == k, "conv instructions")
            l1, l2 = tp.irreps_in1[ins.i_in1].ir.l, tp.irreps_in2[ins.i_in2].ir.l
            l3 = tp.irreps_out[ins.i_out].ir.l
            _require(tp.irreps_in2[ins.i_in2].mul == 1, "edge attribute multiplicity")
            _require(math.isclose(ins.path_weight, math.sqrt(2 * l3 + 1)), "conv normalisation")
            paths.append([int(l1), int(l2), int(l3)])
        _require(tp.weight_numel == len(paths) * channels, "conv weight count")
        config["conv_paths"].append(paths)
        # Linear after the convolution: one block per tensor-product output.
        fan = {}
        for _, l3 in ((q[:2], q[2]) for q in paths):
            fan[l3] = fan.get(l3, 0) + 1
        for k, (ins, w) in enumerate(_split(inter.linear)):
            l3 = paths[ins.i_in][2]
            _require(ins.i_in == k and inter.linear.irreps_out[ins.i_out].ir.l == l3, "linear")
            _require(math.isclose(ins.path_weight, (fan[l3] * channels) ** -0.5), "linear norm")
            params[f"{pre}.linear.{k}"] = w
        _ls(inter.irreps_out, channels)
        config["avg_num_neighbors"].append(float(inter.avg_num_neighbors))
        # Species-dependent skip connection
        skip = inter.skip_tp
        for ins, w in _split(skip):
            l1 = skip.irreps_in1[ins.i_in1].ir.l
            _require(skip.irreps_out[ins.i_out].ir.l == l1, "skip paths")
            params[f"{pre}.skip.{l1}"] = w  # [C, n_el, C]
        # Product basis
        _require(prod.use_sc, "product without self-connection")
        out_ls = _ls(prod.linear.irreps_out, channels)
        config["hidden_ls"].append(out_ls)
        sym = prod.symmetric_contractions
        _require(type(sym).__name__ == "SymmetricContraction", f"contraction {type(sym).__name__}")
        corr = None
        for l_out, con in zip(out_ls, sym.contractions, strict=True):
            corr = int(con.correlation)
            cname = f"prod{i}.L{l_out}"
            shapes = []
            for nu in range(1, corr + 1):
                u = _np(con.U_tensors(nu))
                if l_out == 0:
                    u = u[None]
                shapes.append(list(u.shape))
                for key, arr in sparse_u(u).items():
                    params[f"{cname}.U{nu}.{key}"] = arr
            config["u_shapes"][cname] = shapes
            params[f"{cname}.w{corr}"] = _np(con.weights_max)
            for j, w in enumerate(con.weights):
                params[f"{cname}.w{corr - 1 - j}"] = _np(w)
        config["correlation"].append(corr)
        _linear_by_l(prod.linear, f"prod{i}.linear", params, channels)
        # Readout
        ro = model.readouts[i]
        if i < n_int - 1:
            _require(type(ro).__name__ == "LinearReadoutBlock", "readout kind")
            (ins, w), *rest = _split(ro.linear)
            _require(not rest and ro.linear.irreps_in[ins.i_in].ir.l == 0, "readout paths")
            params[f"readout{i}.linear"] = w
        else:
            _require(type(ro).__name__ == "NonLinearReadoutBlock", "last readout kind")
            (_, w1), *rest1 = _split(ro.linear_1)
            (_, w2), *rest2 = _split(ro.linear_2)
            _require(not rest1 and not rest2, "readout paths")
            act = ro.non_linearity.acts[0]
            _require(getattr(act, "f", None) is torch.nn.functional.silu, "readout gate")
            params[f"readout{i}.linear_1"] = w1
            params[f"readout{i}.linear_2"] = w2
            config["readout_cst"] = _cst(act)
    return MaceModel(config, params)


def load_torch_model(path: str | Path):
    """The mace-torch module in a `.model` file (see the module docstring on pickles)."""
    import mace  # noqa: F401  (its classes must be importable to unpickle the module)
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"MACE model file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a pickled module, as mace-torch saves its models
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict):
        raise MaceModelError(
            f"{path} holds a state dict without the model's architecture; give the "
            "`.model` file that mace-torch writes (the whole module)"
        )
    return obj


def convert(model_path: str | Path, out: str | Path) -> MaceModel:
    """`godiff convert-mace`: read a mace-torch model file, write ours; returns the model."""
    from godiff_jax.potentials.mace.model_file import save_mace

    model = from_torch(load_torch_model(model_path))
    save_mace(out, model)
    return model
