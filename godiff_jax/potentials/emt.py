"""Effective-medium theory (EMT) in JAX: a port of the model ASE's `EMT` calculator computes.

EMT (Jacobsen, Stoltze & Nørskov, Surf. Sci. 366, 394 (1996)) gives atom i the energy

    E_i = E_c(s_i) + 6 V0_i exp(-kappa_i ds_i) - V0_i / (2 gamma2_i) * sigma2_i - E0_i
    E_c(s) = E0_i (1 + lambda_i ds_i) exp(-lambda_i ds_i)
    ds_i = -log(sigma1_i / (12 gamma1_i)) / (beta eta2_i)

with neighbour densities summed over every neighbour j (periodic images included) within
the list cutoff:

    sigma1_i = sum_j chi_ij w(r_ij) exp(-eta2_j (r_ij - beta s0_j))
    sigma2_i = sum_j chi_ij w(r_ij) exp(-kappa_j (r_ij / beta - s0_j))
    chi_ij = n0_j / n0_i,  w(r) = 1 / (1 + exp(acut (r - rc)))

The parameters, the cutoff rules and the `beta` rounding follow ASE (3.23+) exactly, so
energies and forces agree with `ase.calculators.emt.EMT` to ~1e-11 in float64. As in ASE,
rc/acut/rc_list come from the largest s0 of the whole parameter table by default (so they
do not depend on the elements present); `asap_cutoff=True` takes the largest s0 among the
atoms present and rc_list = 1.045 rc, like ASE's `EMT(asap_cutoff=True)`.

Two entry points:
- `make_emt_energy(numbers, cell, pbc)`: generic, energy(positions[N, 3]).
- `emt_energy_fn(system)`: the fast path for a `System`, energy(mobile_positions[M, 3]).
  Everything involving only the fixed template is computed once on the host in float64;
  the jitted function only sums pairs that involve a mobile atom: mobile-mobile over
  the periodic images that can matter (minimum image along axes wider than twice the
  cutoff), and each mobile atom against a precomputed list of the template images that
  can reach the bin of the cell it sits in.

Both are pure functions of positions: forces by `jax.grad`, batches by `jax.vmap`. They
compute in the dtype of the positions they are given.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import ase.data
import jax
import jax.numpy as jnp
import numpy as np
from ase.units import Bohr

from godiff_jax.geometry import IMAGE_MARGIN, PeriodicImages
from godiff_jax.system import System

EnergyFn = Callable[[jax.Array], jax.Array]

# Jacobsen et al.'s table as ASE ships it (ASE's order and values):
#        E0 (eV), s0 (bohr), V0 (eV), eta2, kappa, lambda (bohr^-1), n0 (bohr^-3)
_PARAMETERS: dict[str, tuple[float, float, float, float, float, float, float]] = {
    "Al": (-3.28, 3.00, 1.493, 1.240, 2.000, 1.169, 0.00700),
    "Cu": (-3.51, 2.67, 2.476, 1.652, 2.740, 1.906, 0.00910),
    "Ag": (-2.96, 3.01, 2.132, 1.652, 2.790, 1.892, 0.00547),
    "Au": (-3.80, 3.00, 2.321, 1.674, 2.873, 2.182, 0.00703),
    "Ni": (-4.44, 2.60, 3.673, 1.669, 2.757, 1.948, 0.01030),
    "Pd": (-3.90, 2.87, 2.773, 1.818, 3.107, 2.155, 0.00688),
    "Pt": (-5.85, 2.90, 4.067, 1.812, 3.145, 2.192, 0.00802),
    # ASE's "just for fun" light elements: not for serious use, but ASE accepts them.
    "H": (-3.21, 1.31, 0.132, 2.652, 2.790, 3.892, 0.00547),
    "C": (-3.50, 1.81, 0.332, 1.652, 2.790, 1.892, 0.01322),
    "N": (-5.10, 1.88, 0.132, 1.652, 2.790, 1.892, 0.01222),
    "O": (-4.60, 1.95, 0.332, 1.652, 2.790, 1.892, 0.00850),
}

SUPPORTED_ELEMENTS: tuple[str, ...] = tuple(_PARAMETERS)

# (16 pi / 3)^(1/3) / sqrt(2) = 1.8093997..., rounded as ASE (and ASAP) historically do;
# the rounded value is part of the model.
BETA = 1.809

# Pairs closer than this (Å^2) are treated as at this distance: keeps the gradient finite
# if two atoms coincide (e.g. both clamped into the same box corner). EMT has no hard
# core, so the energy there is finite anyway.
_MIN_R2 = 1e-12


# --------------------------------------------------------------------------------------
# Parameters


class _Cutoff(NamedTuple):
    rc: float  # Å, midpoint of the logistic cutoff w(r)
    rc_list: float  # Å, neighbours at r >= rc_list are ignored
    acut: float  # 1/Å, steepness of w(r)


class _Species(NamedTuple):
    """Per-atom parameters in Å / eV units, each [n] float64."""

    E0: np.ndarray
    s0: np.ndarray
    V0: np.ndarray
    eta2: np.ndarray
    kappa: np.ndarray
    lam: np.ndarray
    n0: np.ndarray
    gamma1: np.ndarray
    gamma2: np.ndarray


def _check_supported(numbers: np.ndarray) -> None:
    symbols = sorted({ase.data.chemical_symbols[int(z)] for z in numbers})
    missing = [s for s in symbols if s not in _PARAMETERS]
    if missing:
        raise ValueError(
            f"EMT has no parameters for {' '.join(missing)}; "
            f"supported: {' '.join(SUPPORTED_ELEMENTS)}"
        )


def _cutoff(numbers: np.ndarray, asap_cutoff: bool) -> _Cutoff:
    """ASE's cutoff: from the largest s0 of the whole table, or (ASAP) of present atoms."""
    if asap_cutoff:
        present = {ase.data.chemical_symbols[int(z)] for z in numbers}
        s0_max = max(p[1] for s, p in _PARAMETERS.items() if s in present)
    else:
        s0_max = max(p[1] for p in _PARAMETERS.values())
    r1nn = BETA * s0_max * Bohr  # fcc nearest-neighbour distance of the largest atom
    rc = r1nn * 0.5 * (math.sqrt(3.0) + 2.0)  # between the 3rd and 4th fcc shells
    # w(4th shell) = 1e-4
    acut = math.log(1.0 / 1e-4 - 1.0) / (2.0 * r1nn - rc)
    rc_list = rc * 1.045 if asap_cutoff else rc + 0.5
    return _Cutoff(rc, rc_list, acut)


def _species(numbers: np.ndarray, cut: _Cutoff) -> _Species:
    table = np.array(
        [_PARAMETERS[ase.data.chemical_symbols[int(z)]] for z in numbers], dtype=float
    ).reshape(-1, 7)
    E0, s0, V0, eta2, kappa, lam, n0 = table.T
    s0 = s0 * Bohr
    eta2, kappa, lam = eta2 / Bohr, kappa / Bohr, lam / Bohr
    n0 = n0 / Bohr**3
    # gamma1/gamma2 normalise sigma1/sigma2 to their values in the perfect fcc crystal
    # (first three shells: 12, 6, 24 neighbours), seen through the same cutoff w(r).
    shells = np.array([12.0, 6.0, 24.0])
    r = BETA * s0[:, None] * np.sqrt([1.0, 2.0, 3.0])  # [n, 3]
    x = shells * _logistic(r, cut) / 12.0
    gamma1 = np.sum(x * np.exp(-eta2[:, None] * (r - BETA * s0[:, None])), axis=1)
    gamma2 = np.sum(x * np.exp(-kappa[:, None] / BETA * (r - BETA * s0[:, None])), axis=1)
    return _Species(E0, s0, V0, eta2, kappa, lam, n0, gamma1, gamma2)


def _logistic(r, cut: _Cutoff):
    return 1.0 / (1.0 + np.exp(cut.acut * (r - cut.rc)))


# --------------------------------------------------------------------------------------
# Shared pair and atom maths (numpy on the host, jax.numpy inside jit)


def _const(values: np.ndarray, shape: tuple[int, ...]) -> float | np.ndarray:
    """A Python float when all values agree (the usual single-element case).

    Scalars let XLA see that e.g. exp(eta2_j (...)) for receiver and source are the same
    expression and compute it once; arrays broadcast against the pair block otherwise.
    """
    values = np.asarray(values, dtype=float)
    if values.size and np.all(values == values.flat[0]):
        return float(values.flat[0])
    return values.reshape(shape)


def _cast(value, dtype):
    return value if isinstance(value, float) else jnp.asarray(value, dtype)


def _safe_r(xp, d2, ok, rc_list):
    # Double-where: masked entries (an atom with itself, pairs beyond the cutoff, padding)
    # get a harmless r *before* sqrt/exp, so neither values nor gradients become inf/NaN
    # (a where after the fact would still backpropagate 0 * inf = NaN).
    d2 = xp.where(ok, xp.maximum(d2, _MIN_R2), rc_list * rc_list)
    return xp.sqrt(d2)


def _embedding(xp, sigma1, E0, V0, eta2, kappa, lam, gamma1):
    """E_c(s) + 6 V0 exp(-kappa ds) for densities sigma1 (0 for an isolated atom)."""
    has = sigma1 > 0
    s1 = xp.where(has, sigma1, 1.0)
    ds = -xp.log(s1 / (12.0 * gamma1)) / (BETA * eta2)
    e = E0 * (1.0 + lam * ds) * xp.exp(-lam * ds) + 6.0 * V0 * xp.exp(-kappa * ds)
    # sigma1 -> 0 sends ds -> inf and both terms -> 0: ASE skips such atoms.
    return xp.where(has, e, 0.0)


def _host_sigmas(
    recv: np.ndarray,
    src: np.ndarray,
    sp_r: _Species,
    sp_s: _Species,
    shifts: np.ndarray,
    cut: _Cutoff,
    same: bool,
    chunk: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """float64 sigma1, sigma2 of `recv` atoms from `src` atoms over all `shifts`."""
    sigma1 = np.zeros(len(recv))
    sigma2 = np.zeros(len(recv))
    img = src[None, :, :] + shifts[:, None, :]  # [S, J, 3]
    eta2, kappa, s0 = sp_s.eta2[None, :, None], sp_s.kappa[None, :, None], sp_s.s0[None, :, None]
    zero_shift = np.all(shifts == 0.0, axis=1)  # [S]
    for start in range(0, len(recv), chunk):
        stop = min(start + chunk, len(recv))
        d = img[None, :, :, :] - recv[start:stop, None, None, :]  # [I, S, J, 3]
        d = d.transpose(0, 2, 1, 3)  # [I, J, S, 3]
        d2 = np.sum(d * d, axis=-1)
        ok = d2 < cut.rc_list**2
        if same:
            self_pair = np.arange(start, stop)[:, None] == np.arange(len(src))[None, :]
            ok &= ~(self_pair[:, :, None] & zero_shift[None, None, :])
        r = _safe_r(np, d2, ok, cut.rc_list)
        w = np.where(ok, _logistic(r, cut), 0.0)
        chi = sp_s.n0[None, :, None] / sp_r.n0[start:stop, None, None]
        sigma1[start:stop] = np.sum(chi * w * np.exp(-eta2 * (r - BETA * s0)), axis=(1, 2))
        sigma2[start:stop] = np.sum(chi * w * np.exp(-kappa * (r / BETA - s0)), axis=(1, 2))
    return sigma1, sigma2


# --------------------------------------------------------------------------------------
# The energy model


class _Plan(NamedTuple):
    """Everything the jitted EMT energy closes over (host-side, built once)."""

    images: PeriodicImages
    cut: _Cutoff
    n_mob: int
    n_tmp: int
    cand: Any  # Candidates of template images per bin (None without a template)
    mm_pair: np.ndarray  # [M, M, S] a real pair (not an atom with itself)
    mm: dict  # mobile-mobile constants
    mob_c: dict  # mobile constants per receiver [M]
    mob_col: dict  # ... as a column [M, 1] against candidates [M, C]
    tmp_c: dict  # template constants [T]
    same_e1: bool  # mobile and template share eta2, s0: one exponential serves both ways
    same_e2: bool  # ... kappa, s0
    isolated: np.ndarray  # [T] template atoms with no template neighbour
    template_energy: float  # eV, the template alone (float64, added last)


def _build(
    template_positions: np.ndarray,
    template_numbers: np.ndarray,
    mobile_numbers: np.ndarray,
    cell: np.ndarray | None,
    pbc: Sequence[bool] | bool,
    asap_cutoff: bool,
) -> EnergyFn:
    plan = _plan(template_positions, template_numbers, mobile_numbers, cell, pbc, asap_cutoff)

    def energy(mobile_positions: jax.Array) -> jax.Array:
        return _energy(plan, mobile_positions)

    return energy


def _plan(template_positions, template_numbers, mobile_numbers, cell, pbc, asap_cutoff) -> _Plan:
    tnum = np.asarray(template_numbers, dtype=int).reshape(-1)
    mnum = np.asarray(mobile_numbers, dtype=int).reshape(-1)
    tpos = np.asarray(template_positions, dtype=float).reshape(-1, 3)
    if len(tpos) != len(tnum):
        raise ValueError(f"{len(tpos)} template positions for {len(tnum)} template numbers")
    if len(mnum) == 0:
        raise ValueError("EMT energy needs at least one atom whose position is an input")
    _check_supported(np.concatenate([tnum, mnum]))

    cut = _cutoff(np.concatenate([tnum, mnum]), asap_cutoff)
    images = PeriodicImages(cell, pbc, cut.rc_list + IMAGE_MARGIN)
    sp_t, sp_m = _species(tnum, cut), _species(mnum, cut)
    n_mob, n_tmp = len(mnum), len(tnum)

    # ---- template-only part, once, float64 --------------------------------------
    tpos = images.wrap_host(tpos)
    if n_tmp:
        s1_tt, s2_tt = _host_sigmas(tpos, tpos, sp_t, sp_t, images.shifts(), cut, same=True)
    else:
        s1_tt = s2_tt = np.zeros(0)
    e_tt = (
        _embedding(np, s1_tt, sp_t.E0, sp_t.V0, sp_t.eta2, sp_t.kappa, sp_t.lam, sp_t.gamma1)
        - sp_t.V0 / (2.0 * sp_t.gamma2) * s2_tt
        - sp_t.E0
    )
    isolated = s1_tt <= 0.0  # template atoms with no template neighbour at all
    # For each bin of the cell, the template images a mobile atom there can reach.
    cand = images.candidates(tpos) if n_tmp else None

    # ---- static arrays for the jitted part --------------------------------------
    n_shift = len(images.pair_shifts())
    # [M, M, S]: an atom with itself in the zero shift is not a pair.
    mm_pair = ~(np.eye(n_mob, dtype=bool)[:, :, None] & (np.arange(n_shift) == 0))
    mm, mob_c, mob_col, tmp_c = _constants(sp_m, sp_t, s1_tt, isolated)
    same_e1 = all(isinstance(d[k], float) for d in (mob_c, tmp_c) for k in ("eta2", "bs0")) and (
        (mob_c["eta2"], mob_c["bs0"]) == (tmp_c["eta2"], tmp_c["bs0"])
    )
    same_e2 = all(isinstance(d[k], float) for d in (mob_c, tmp_c) for k in ("kappa", "s0")) and (
        (mob_c["kappa"], mob_c["s0"]) == (tmp_c["kappa"], tmp_c["s0"])
    )
    # Kept as a Python float and added last: in float32 this large constant would
    # otherwise swamp the per-structure differences.
    template_energy = float(np.sum(e_tt))
    return _Plan(
        images,
        cut,
        n_mob,
        n_tmp,
        cand,
        mm_pair,
        mm,
        mob_c,
        mob_col,
        tmp_c,
        same_e1,
        same_e2,
        isolated,
        template_energy,
    )


def _constants(sp_m: _Species, sp_t: _Species, s1_tt: np.ndarray, isolated: np.ndarray):
    """Per-pair and per-atom constants: mobile-mobile [M, M, 1], mobile [M] and [M, 1],
    template [T] (Python floats where all atoms agree, see `_const`)."""
    n_mob, n_tmp = len(sp_m.E0), len(sp_t.E0)
    # Energy change of template atoms relative to their template-only state. With
    # ds = ds0 + delta: E_c(ds) - E_c(ds0) = a [b expm1(-lam delta) + lam delta
    # exp(-lam delta)] and 6 V0 (exp(-kappa ds) - exp(-kappa ds0)) = c expm1(-kappa
    # delta): exact, zero for untouched atoms, and free of cancellation in float32.
    s1_ref = np.where(isolated, 1.0, s1_tt)
    ds0 = -np.log(s1_ref / (12.0 * sp_t.gamma1)) / (BETA * sp_t.eta2)
    src = (1, n_mob, 1)  # the source atom is on axis 1 of [M, M, S]
    mm = {
        "eta2": _const(sp_m.eta2, src),
        "bs0": _const(BETA * sp_m.s0, src),
        "kappa": _const(sp_m.kappa, src),
        "s0": _const(sp_m.s0, src),
        "chi": _const(sp_m.n0[None, :] / sp_m.n0[:, None], (n_mob, n_mob, 1)),
    }
    # Mobile parameters, per mobile atom [M] (as receivers) or [M, 1] (against [M, C]).
    mob = {
        "E0": sp_m.E0,
        "V0": sp_m.V0,
        "eta2": sp_m.eta2,
        "kappa": sp_m.kappa,
        "lam": sp_m.lam,
        "gamma1": sp_m.gamma1,
        "pair2": -sp_m.V0 / (2.0 * sp_m.gamma2),
        "bs0": BETA * sp_m.s0,
        "s0": sp_m.s0,
        "n0": sp_m.n0,
    }
    # Template parameters, per template atom [T]; gathered per candidate when they vary.
    tmp = {
        "eta2": sp_t.eta2,
        "bs0": BETA * sp_t.s0,
        "kappa": sp_t.kappa,
        "s0": sp_t.s0,
        "n0": sp_t.n0,
        "pair2": -sp_t.V0 / (2.0 * sp_t.gamma2),
        # relative-change constants
        "a": sp_t.E0 * np.exp(-sp_t.lam * ds0),
        "b": 1.0 + sp_t.lam * ds0,
        "c": 6.0 * sp_t.V0 * np.exp(-sp_t.kappa * ds0),
        "s1_ref": s1_ref,
        "lam": sp_t.lam,
        "beta_eta2": BETA * sp_t.eta2,
        "E0": sp_t.E0,
        "V0": sp_t.V0,
        "gamma1": sp_t.gamma1,
    }
    mob_c = {k: _const(v, (n_mob,)) for k, v in mob.items()}
    mob_col = {k: _const(v, (n_mob, 1)) for k, v in mob.items()}
    tmp_c = {k: _const(v, (n_tmp,)) for k, v in tmp.items()}
    return mm, mob_c, mob_col, tmp_c


def _weight(cut: _Cutoff, r, ok):
    return jnp.where(ok, jax.nn.sigmoid(cut.acut * (cut.rc - r)), 0.0)


def _energy(plan: _Plan, mobile_positions: jax.Array) -> jax.Array:
    cut = plan.cut
    x = jnp.asarray(mobile_positions)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    dtype = x.dtype
    x = plan.images.wrap(x.reshape(plan.n_mob, 3))

    # mobile-mobile, over all translations (own images included): [M, M, S]
    c = {k: _cast(v, dtype) for k, v in plan.mm.items()}
    d = plan.images.pair_vectors(x)
    d2 = jnp.sum(d * d, axis=-1)
    ok = jnp.asarray(plan.mm_pair) & (d2 < cut.rc_list**2)
    r = _safe_r(jnp, d2, ok, cut.rc_list)
    cw = c["chi"] * _weight(cut, r, ok)
    sigma1 = jnp.sum(cw * jnp.exp(c["eta2"] * (c["bs0"] - r)), axis=(1, 2))
    sigma2 = jnp.sum(cw * jnp.exp(c["kappa"] * (c["s0"] - r / BETA)), axis=(1, 2))

    total = jnp.zeros((), dtype)
    if plan.n_tmp:
        sigma1, sigma2, total = _template_terms(plan, x, sigma1, sigma2, total)

    q = {k: _cast(v, dtype) for k, v in plan.mob_c.items()}
    e_mob = (
        _embedding(jnp, sigma1, q["E0"], q["V0"], q["eta2"], q["kappa"], q["lam"], q["gamma1"])
        + q["pair2"] * sigma2
        - q["E0"]
    )
    return total + jnp.sum(e_mob) + plan.template_energy


def _template_terms(plan: _Plan, x, sigma1, sigma2, total):
    """Mobile-template pairs: each mobile atom against its bin's candidates, [M, C]; the
    mobile densities grow, and the template atoms' energy changes are added to total."""
    cut, dtype, n_tmp = plan.cut, x.dtype, plan.n_tmp
    pos, idx, live = plan.cand.gather(x)
    d = pos - x[:, None, :]
    d2 = jnp.sum(d * d, axis=-1)
    ok = live & (d2 < cut.rc_list**2)
    r = _safe_r(jnp, d2, ok, cut.rc_list)
    w = _weight(cut, r, ok)
    m = {k: _cast(v, dtype) for k, v in plan.mob_col.items()}
    t = {
        k: v if isinstance(v, float) else jnp.asarray(v, dtype)[idx]
        for k, v in plan.tmp_c.items()
        if k in ("eta2", "bs0", "kappa", "s0", "n0", "pair2")
    }
    e1_t = jnp.exp(t["eta2"] * (t["bs0"] - r))  # template source -> mobile
    e2_t = jnp.exp(t["kappa"] * (t["s0"] - r / BETA))
    e1_m = e1_t if plan.same_e1 else jnp.exp(m["eta2"] * (m["bs0"] - r))
    e2_m = e2_t if plan.same_e2 else jnp.exp(m["kappa"] * (m["s0"] - r / BETA))
    w_to_m = w * (t["n0"] / m["n0"])  # chi, receiver = mobile
    w_to_t = w * (m["n0"] / t["n0"])
    sigma1 = sigma1 + jnp.sum(w_to_m * e1_t, axis=1)
    sigma2 = sigma2 + jnp.sum(w_to_m * e2_t, axis=1)
    # sigma2 of template atoms enters the energy linearly: no scatter needed.
    total = total + jnp.sum(t["pair2"] * w_to_t * e2_m)
    delta1 = jnp.zeros(n_tmp, dtype).at[idx.reshape(-1)].add((w_to_t * e1_m).reshape(-1))

    q = {k: _cast(v, dtype) for k, v in plan.tmp_c.items()}
    delta = -jnp.log1p(delta1 / q["s1_ref"]) / q["beta_eta2"]
    lam_d = q["lam"] * delta
    d_e = q["a"] * (q["b"] * jnp.expm1(-lam_d) + lam_d * jnp.exp(-lam_d))
    d_e = d_e + q["c"] * jnp.expm1(-q["kappa"] * delta)
    if plan.isolated.any():
        # No template neighbours: the whole embedding comes from mobile atoms.
        direct = _embedding(
            jnp, delta1, q["E0"], q["V0"], q["eta2"], q["kappa"], q["lam"], q["gamma1"]
        )
        d_e = jnp.where(jnp.asarray(plan.isolated), direct, d_e)
    return sigma1, sigma2, total + jnp.sum(d_e)


def make_emt_energy(
    numbers: Sequence[int] | np.ndarray,
    cell: np.ndarray | Sequence[Sequence[float]] | None = None,
    pbc: bool | Sequence[bool] = False,
    *,
    asap_cutoff: bool = False,
) -> EnergyFn:
    """EMT energy (eV) of any atoms: energy(positions [N, 3] Å) -> scalar.

    `cell` rows are the lattice vectors (Å); only the axes with `pbc` True are periodic
    (a cell vector along a non-periodic axis may be zero). `asap_cutoff` as in ASE's
    `EMT`: False (ASE's default) takes the cutoff from the largest atom in the whole
    parameter table, True from the largest atom present. Raises ValueError for elements
    EMT has no parameters for.
    """
    return _build(np.zeros((0, 3)), np.zeros(0, dtype=int), numbers, cell, pbc, asap_cutoff)


@functools.lru_cache(maxsize=32)  # one function per System: compiled programs are reused
def emt_energy_fn(system: System, *, asap_cutoff: bool = False) -> EnergyFn:
    """EMT energy (eV) of template + mobile atoms: energy(mobile_positions [M, 3] Å).

    Template-only terms are precomputed once on the host in float64; the returned
    function evaluates only pairs involving a mobile atom, and is jit/vmap/grad-able.
    """
    return _build(
        system.template_positions,
        system.template_numbers,
        system.mobile_numbers,
        system.cell,
        system.pbc,
        asap_cutoff,
    )
