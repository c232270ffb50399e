"""Score model: shapes, equivariance, periodicity, the grid against a dense reference,
transfer between systems and finite gradients."""

import itertools
import math

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import godiff_jax as gd
from godiff_jax.model import (
    NUM_ELEMENTS,
    ScoreModel,
    ScoreModelConfig,
    count_params,
    score_all_atoms,
    template_classes,
)

# ---------------------------------------------------------------- dense reference
# PaiNN written out from the parameters alone: every template image and every mobile
# image within a few cells, masks instead of neighbour lists, float64, no grid and no
# shared code with the model beyond the parameter names. The template hears only itself,
# or, with `template_receives`, the mobile atoms too (PaiNN over all atoms).


def _dense(p, x):
    y = x @ jnp.asarray(p["kernel"], jnp.float64)
    return y + jnp.asarray(p["bias"], jnp.float64) if "bias" in p else y


def _mlp(p, x):
    return _dense(p["dense_1"], jax.nn.silu(_dense(p["dense_0"], x)))


def _radial(r, n_rbf, cutoff):
    d = jnp.sqrt(jnp.sum(r * r, -1))
    mu = np.linspace(0, cutoff, n_rbf)
    rbf = jnp.exp(-0.5 / (mu[1] - mu[0]) ** 2 * (d[..., None] - mu) ** 2)
    fcut = jnp.where(d < cutoff, 0.5 * (jnp.cos(math.pi * d / cutoff) + 1), 0.0)
    return rbf, fcut, r / jnp.where(d > 0, d, 1.0)[..., None]


def _interact(p, cfg, b, s_dst, v_dst, s_src, v_src, r, mask):
    """Messages to receivers from senders: r [Nd, Ns, 3], mask [Nd, Ns]."""
    f = cfg.features
    rbf, fcut, unit = _radial(r, cfg.n_rbf, cfg.cutoff)
    k = jnp.asarray(p["filter_kernel"], jnp.float64).reshape(cfg.n_rbf, cfg.n_blocks, 3 * f)
    bias = jnp.asarray(p["filter_bias"], jnp.float64).reshape(cfg.n_blocks, 3 * f)
    w = (rbf @ k[:, b] + bias[b]) * (fcut * mask)[..., None]
    x = w * _mlp(p[f"interaction_{b}"], s_src)[None]
    ds = x[..., :f].sum(1)
    dv = (x[..., None, f : 2 * f] * unit[..., None]).sum(1)
    dv = dv + (x[..., None, 2 * f :] * v_src[None]).sum(1)
    return s_dst + ds, v_dst + dv


def _mix(p, s, v, f):
    vmix = v @ jnp.asarray(p["mu_channel_mix"]["kernel"], jnp.float64)
    vv, vw = vmix[..., :f], vmix[..., f:]
    x = _mlp(
        p["intraatomic_context_net"], jnp.concatenate([s, jnp.sqrt((vv**2).sum(-2) + 1e-8)], -1)
    )
    return s + x[:, :f] + x[:, 2 * f :] * (vv * vw).sum(-2), v + x[:, None, f : 2 * f] * vw


def _head(p, s, v):
    for i in range(3):
        q = p[f"block_{i}"]
        n = q["mix_vectors"]["kernel"].shape[1] // 2
        vmix = v @ jnp.asarray(q["mix_vectors"]["kernel"], jnp.float64)
        x = _mlp(
            q["scalar_net"], jnp.concatenate([s, jnp.sqrt((vmix[..., :n] ** 2).sum(-2) + 1e-8)], -1)
        )
        s, v = x[:, : x.shape[1] - n], x[:, None, -n:] * vmix[..., n:]
        s = jax.nn.silu(s) if i < 2 else s
    return v[..., 0]


def reference_scores(system, cfg, params, x, t):
    """Scores [B, M, 3] (float64) for x [B, M, 3], t [B]."""
    fn = jax.jit(jax.vmap(lambda p, xi, ti: _reference_score(system, cfg, p, xi, ti), (None, 0, 0)))
    return fn(params, jnp.asarray(x, jnp.float64), jnp.asarray(t, jnp.float64))


def _reference_score(system, cfg, params, x, t):
    """Scores [M, 3] for one structure x [M, 3]: every image within the cutoff."""
    f = cfg.features
    heights = 1 / np.linalg.norm(np.linalg.inv(system.cell), axis=0)
    reach = int(np.ceil(cfg.cutoff / heights.min())) + 1
    periodic = [system.mode == "surface", system.mode == "surface", False]
    ns = [range(-reach, reach + 1) if per else range(1) for per in periodic]
    shifts = np.array(list(itertools.product(*ns)), float) @ system.cell
    zero = np.all(shifts == 0, axis=1)
    tpos, mpos = system.template_positions, jnp.asarray(x, jnp.float64)
    nt, m = len(tpos), len(mpos)
    emb = jnp.asarray(params["embedding"]["embedding"], jnp.float64)
    s_m, v_m = jnp.asarray(emb[system.mobile_numbers]), jnp.zeros((m, 3, f))
    # Senders are (atom, image) pairs flattened atom-major.
    r_mm = (mpos[None, :, None] + shifts[None, None] - mpos[:, None, None]).reshape(m, -1, 3)
    mask_mm = ~(np.eye(m, dtype=bool)[:, :, None] & zero).reshape(m, -1)
    rep_s = lambda a: jnp.repeat(a, len(shifts), axis=0)  # noqa: E731
    if nt:
        s_t, v_t = jnp.asarray(emb[system.template_numbers]), jnp.zeros((nt, 3, f))
        r_tt = (tpos[None, :, None] + shifts[None, None] - tpos[:, None, None]).reshape(nt, -1, 3)
        mask_tt = ~(np.eye(nt, dtype=bool)[:, :, None] & zero).reshape(nt, -1)
        r_mt = (tpos[None, :, None] + shifts[None, None] - mpos[:, None, None]).reshape(m, -1, 3)
        mask_mt = np.ones(r_mt.shape[:2], bool)
        r_tm = (mpos[None, :, None] + shifts[None, None] - tpos[:, None, None]).reshape(nt, -1, 3)
        # Keep r finite at masked self pairs.
        r_tt = jnp.where(mask_tt[..., None], r_tt, 100.0)
    r_mm = jnp.where(mask_mm[..., None], r_mm, 100.0)
    for b in range(cfg.n_blocks):
        s_new, v_new = _interact(params, cfg, b, s_m, v_m, rep_s(s_m), rep_s(v_m), r_mm, mask_mm)
        if nt:
            ds, dv = _interact(params, cfg, b, 0.0, 0.0, rep_s(s_t), rep_s(v_t), r_mt, mask_mt)
            s_new, v_new = s_new + ds, v_new + dv
            s_t2, v_t2 = _interact(params, cfg, b, s_t, v_t, rep_s(s_t), rep_s(v_t), r_tt, mask_tt)
            if cfg.template_receives:  # full PaiNN: the template hears the mobile atoms too
                mask_tm = np.ones(r_tm.shape[:2], bool)
                ds, dv = _interact(params, cfg, b, 0.0, 0.0, rep_s(s_m), rep_s(v_m), r_tm, mask_tm)
                s_t2, v_t2 = s_t2 + ds, v_t2 + dv
            s_t, v_t = _mix(params[f"mixing_{b}"], s_t2, v_t2, f)
        s_m, v_m = _mix(params[f"mixing_{b}"], s_new, v_new, f)
    tf = jnp.broadcast_to(jnp.array([jnp.sin(math.pi * t), jnp.cos(math.pi * t)]), (m, 2))
    return _head(params["score_head"], jnp.concatenate([s_m, tf], -1), v_m)


# ------------------------------------------------------------------------- helpers


def random_mobile(key, system, batch, noise=0.0):
    """Positions in the box (surface: uniform over the cell in x/y), plus Gaussian noise."""
    k1, k2 = jax.random.split(key)
    u = np.asarray(jax.random.uniform(k1, (batch, system.n_mobile, 3)))
    lo, hi = system.box_lo, system.box_hi
    if system.mode == "surface":
        xy = u[..., :2] @ system.cell[:2, :2]
        z = lo[2] + u[..., 2:] * (hi[2] - lo[2])
        x = np.concatenate([xy, z], -1)
    else:
        x = lo + u * (hi - lo)
    return x + noise * np.asarray(jax.random.normal(k2, x.shape))


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def random_rotation(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


class Case:
    """A system, its model, the jitted model and parameters."""

    def __init__(self, system, config=None, seed=0):
        self.system = system
        self.model = ScoreModel(system, config or ScoreModelConfig())
        self.fn = jax.jit(self.model)
        self.params = self.model.init(jax.random.PRNGKey(seed))

    def reference(self, x, t, params=None):
        params = self.params if params is None else params
        return reference_scores(self.system, self.model.config, params, x, t)


@pytest.fixture(scope="module")
def heptamer():
    return Case(gd.pt111_heptamer())


@pytest.fixture(scope="module")
def adatom():
    return Case(gd.stepped_pt_adatom(), seed=1)


# --------------------------------------------------------------------------- tests

T4 = jnp.array([0.02, 0.3, 0.7, 1.0])


def test_shapes_dtype_and_parameter_count(heptamer):
    h = heptamer
    x = random_mobile(jax.random.PRNGKey(2), h.system, 4)
    out = h.fn(h.params, x, T4)
    assert out.shape == (4, 7, 3) and out.dtype == jnp.float32
    assert np.all(np.isfinite(out)) and np.abs(out).max() > 0
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(h.params))
    assert 220_000 < count_params(h.params) < 240_000
    assert h.params["embedding"]["embedding"].shape == (NUM_ELEMENTS, 64)
    # apply with a separately computed context.
    ctx = jax.jit(h.model.context)(h.params)
    np.testing.assert_array_equal(jax.jit(h.model.apply)(h.params, ctx, x, T4), out)
    # score_all_atoms pads zeros on the fixed template rows.
    full = score_all_atoms(out, h.system)
    assert full.shape == (4, h.system.n_atoms, 3)
    assert np.all(np.asarray(full)[:, h.system.fixed_mask] == 0)
    np.testing.assert_array_equal(np.asarray(full)[:, h.system.mobile_mask], out)


def test_cluster_is_e3_equivariant():
    c = Case(gd.make_cluster_system("Pt5", 8.0), seed=4)
    x = random_mobile(jax.random.PRNGKey(5), c.system, 4)
    rot = random_rotation(0)
    centre = x.mean(axis=1, keepdims=True)
    x_rot = (x - centre) @ rot.T + centre + np.array([0.3, -0.2, 0.1])
    out, out_rot = c.fn(c.params, x, T4), c.fn(c.params, x_rot, T4)
    assert rel_err(out_rot, np.asarray(out) @ rot.T) < 1e-5


def test_surface_lattice_translation_and_permutation(heptamer):
    h = heptamer
    x = random_mobile(jax.random.PRNGKey(6), h.system, 4)
    out = h.fn(h.params, x, T4)
    lattice = 2 * h.system.cell[0] - h.system.cell[1]
    assert rel_err(h.fn(h.params, x + lattice, T4), out) < 1e-5
    perm = np.array([3, 0, 6, 1, 5, 2, 4])
    assert rel_err(h.fn(h.params, x[:, perm], T4), np.asarray(out)[:, perm]) < 1e-5


@pytest.fixture(scope="module")
def heptamer_pairwise():
    """Template messages pair by pair over all 72 template atoms (no symmetry, no row sums)."""
    cfg = ScoreModelConfig(template_symmetry=False, template_row_sums=False)
    return Case(gd.pt111_heptamer(), cfg)


@pytest.mark.parametrize("name", ["heptamer", "heptamer_pairwise", "adatom"])
def test_grid_matches_dense_reference(name, request):
    c = request.getfixturevalue(name)
    # Two inside the box, two noisy (outside it, within the grid margin).
    x = np.concatenate(
        [
            random_mobile(jax.random.PRNGKey(7), c.system, 2),
            random_mobile(jax.random.PRNGKey(8), c.system, 2, noise=0.5),
        ]
    )
    assert rel_err(c.fn(c.params, x, T4), c.reference(x, T4)) < 2e-5


@pytest.mark.parametrize("row_sums", [True, False])
def test_gradients_match_reference(row_sums):
    # A small network on the adatom (mobile self-images), template messages in chunks of
    # two structures (the last one padded), per template row or pair by pair (the
    # hand-written VJP): parameter and position gradients.
    config = ScoreModelConfig(features=16, n_blocks=2, batch_chunk=2, template_row_sums=row_sums)
    c = Case(gd.stepped_pt_adatom(), config, seed=3)
    x = random_mobile(jax.random.PRNGKey(9), c.system, 3, noise=0.3)
    t = jnp.array([0.2, 0.5, 0.8])
    g_fast = jax.jit(jax.grad(lambda p, x: jnp.sum(c.model(p, x, t) ** 2), (0, 1)))(c.params, x)
    g_ref = jax.jit(jax.grad(lambda p, x: jnp.sum(c.reference(x, t, p) ** 2), (0, 1)))(c.params, x)
    errs = jax.tree_util.tree_map(rel_err, g_fast, g_ref)
    assert max(jax.tree_util.tree_leaves(errs)) < 1e-4


def test_params_transfer_between_systems(adatom, heptamer):
    a, h = adatom, heptamer
    assert jax.tree_util.tree_structure(a.params) == jax.tree_util.tree_structure(h.params)
    x = random_mobile(jax.random.PRNGKey(10), h.system, 4)
    out = h.fn(a.params, x, T4)
    assert out.shape == (4, 7, 3) and np.all(np.isfinite(out))


def test_gradients_finite_with_coinciding_atoms(heptamer):
    h = heptamer
    x = random_mobile(jax.random.PRNGKey(11), h.system, 4)
    x[0, 1] = x[0, 0]  # two mobile atoms on top of each other
    x[1, 2] = h.system.template_positions[-1]  # a mobile atom on a template atom
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(12), x.shape))

    def loss(p, x):
        return jnp.mean(jnp.sum((z + 0.3 * h.model(p, x, T4)) ** 2, axis=(-1, -2)))

    value, (gp, gx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(h.params, x)
    assert np.isfinite(value)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(gp))
    assert np.all(np.isfinite(gx))


def test_cluster_with_template_and_vmap():
    template = ase.Atoms("Pt2", positions=[[3.0, 3.0, 2.0], [5.7, 3.0, 2.0]])
    c = Case(
        gd.make_cluster_system("Pt3", 6.0, template=template), ScoreModelConfig(grid_spacing=1.0)
    )
    x = random_mobile(jax.random.PRNGKey(14), c.system, 4, noise=0.4)
    out = c.fn(c.params, x, T4)
    assert rel_err(out, c.reference(x, T4)) < 2e-5
    ctx = c.model.context(c.params)
    per = jax.jit(jax.vmap(lambda xi, ti: c.model.apply(c.params, ctx, xi, ti)))(x, T4)
    assert rel_err(per, out) < 1e-5


@pytest.mark.parametrize("name", ["heptamer", "adatom"])
def test_grid_lists_every_neighbour(name, request):
    """Brute force: every template image within the cutoff of a point is a candidate."""
    c = request.getfixturevalue(name)
    system, model, cutoff = c.system, c.model, c.model.config.cutoff
    rng = np.random.default_rng(0)
    margin = model.config.grid_margin
    n = 400
    frac = rng.uniform(-1.0, 2.0, (n, 2))  # x/y anywhere: wrapped by the lookup
    z = rng.uniform(system.box_lo[2] - margin, system.box_hi[2] + margin, (n, 1))
    # Half the points on grid-cell faces, where rounding decides the cell.
    g = model.grid
    frac[::2] = np.round(frac[::2] / g.step[:2]) * g.step[:2]
    z[1::2] = g.lo[2] + np.round((z[1::2] - g.lo[2]) / g.step[2]) * g.step[2]
    x = np.concatenate([frac @ system.cell[:2, :2], z], axis=1)
    _, r = jax.jit(model._template_neighbours)(jnp.asarray(x[:, None], jnp.float32))
    r = np.asarray(r)[:, 0]  # [n, Kc, 3]
    shifts = np.array(list(itertools.product(range(-4, 5), range(-4, 5), [0])), float)
    images = (system.template_positions[None] + (shifts @ system.cell)[:, None]).reshape(-1, 3)
    for i in range(n):
        d = images - x[i]
        true = d[np.linalg.norm(d, axis=1) < cutoff]
        gap = np.abs(true[:, None, :] - r[i][None, :, :]).max(-1).min(-1)
        assert np.all(gap < 1e-3), (i, x[i], true[gap >= 1e-3])


def test_chunked_batches_match_one_batch(heptamer):
    h = heptamer
    x = random_mobile(jax.random.PRNGKey(15), h.system, 6, noise=0.2)
    t = jnp.linspace(0.1, 0.9, 6)
    whole = ScoreModel(h.system, ScoreModelConfig(batch_chunk=0))
    assert h.model.config.batch_chunk == 4  # 6 structures: a full chunk and a padded one
    ctx = jax.jit(h.model.context)(h.params)
    chunked = jax.jit(h.model.apply)(h.params, ctx, x, t)
    assert rel_err(chunked, jax.jit(whole.apply)(h.params, ctx, x, t)) < 1e-5


def _slab_system(symbols=None, rattle=0.0):
    from ase.build import fcc111

    slab = fcc111("Pt", size=(3, 3, 2), vacuum=8.0)
    if symbols is not None:
        slab.set_chemical_symbols(symbols)
    if rattle:
        slab.rattle(rattle, seed=1)
    return gd.make_surface_system(slab, "Pt2", (1.5, 4.0))


def test_template_translation_classes(heptamer, adatom):
    classes = [len(np.unique(template_classes(c.system))) for c in (heptamer, adatom)]
    # 6x6x2 Pt(111): one class per layer; the stepped cell is two rows wide along the step.
    assert classes[0] == 2 and classes[1] == 10
    # Alternating species along one row split a layer's class by species and position.
    mixed = _slab_system(["Cu", "Au", "Pt"] * 6)
    rep = template_classes(mixed)
    z = mixed.template_numbers
    assert all(z[i] == z[rep[i]] for i in range(len(z)))
    assert len(np.unique(rep)) == 6
    # A rattled slab has no symmetry left.
    assert len(np.unique(template_classes(_slab_system(rattle=0.05)))) == 18


@pytest.mark.parametrize("symbols", [None, ["Cu", "Au", "Pt"] * 6])
def test_template_symmetry_is_exact(symbols):
    system = _slab_system(symbols)
    on = Case(system, seed=3)
    off = ScoreModel(system, ScoreModelConfig(template_symmetry=False, template_row_sums=False))
    assert len(on.model.template_rows) < system.n_template == len(off.template_rows)
    x = random_mobile(jax.random.PRNGKey(9), system, 4, noise=0.3)

    def loss(model, p):
        return jnp.sum(model(p, x, T4) ** 2)

    np.testing.assert_allclose(on.fn(on.params, x, T4), off(on.params, x, T4), atol=1e-6)
    g_on = jax.grad(lambda p: loss(on.model, p))(on.params)
    g_off = jax.grad(lambda p: loss(off, p))(on.params)
    for a, b in zip(jax.tree.leaves(g_on), jax.tree.leaves(g_off), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(np.abs(b).max()) + 1e-12)


# ------------------------------------------------------ two-way template messages


def test_two_way_messages_are_painn_over_all_atoms():
    """Every atom of the heptamer's two-layer slab is within the cutoff of the box, so
    two-way messages are PaiNN over all 79 atoms: the dense reference with the template
    hearing the mobile atoms, for scores and parameter gradients."""
    cfg = ScoreModelConfig(features=16, n_blocks=3, template_receives=True)
    c = Case(gd.pt111_heptamer(), cfg, seed=4)
    assert len(c.model._receivers[0]) == c.system.n_template
    x = np.concatenate(
        [
            random_mobile(jax.random.PRNGKey(11), c.system, 2),
            random_mobile(jax.random.PRNGKey(12), c.system, 1, noise=0.5),
        ]
    )
    t = T4[:3]
    assert rel_err(c.fn(c.params, x, t), c.reference(x, t)) < 2e-5
    one_way = reference_scores(c.system, ScoreModelConfig(features=16, n_blocks=3), c.params, x, t)
    assert rel_err(one_way, c.reference(x, t)) > 1e-3  # the two models do differ here
    g = jax.jit(jax.grad(lambda p: jnp.sum(c.model(p, x, t) ** 2)))(c.params)
    g_ref = jax.jit(jax.grad(lambda p: jnp.sum(c.reference(x, t, p) ** 2)))(c.params)
    assert max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(rel_err, g, g_ref))) < 1e-4


def test_two_way_messages_relay_through_the_template():
    """Two mobile atoms 5.5 Å apart (cutoff 5 Å): one-way, the first atom's score does not
    depend on the second at all; two-way, it does, through the surface atoms between."""
    system = gd.pt111_heptamer()
    top = system.template_positions[:, 2].max()
    x = np.array(
        [[2.0, 2.0, top + 2.0]] + [[12.0 + 0.9 * k, 12.0, top + 4.5] for k in range(5)]
        + [[7.5, 2.0, top + 2.0]]
    )  # fmt: skip
    t = jnp.array(0.3)

    def dependence(receives: bool) -> np.ndarray:
        cfg = ScoreModelConfig(features=8, n_blocks=2, cutoff=5.0, template_receives=receives)
        model = ScoreModel(system, cfg)
        params = model.init(jax.random.PRNGKey(0))
        first = lambda x6: jnp.sum(model(params, jnp.asarray(x).at[6].set(x6), t)[0])  # noqa: E731
        return np.asarray(jax.grad(first)(jnp.asarray(x[6])))

    assert np.all(dependence(False) == 0)
    assert np.any(dependence(True) != 0)
