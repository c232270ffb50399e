"""Force-field guidance: the L-BFGS recursion, the corrector, the force head, and the
sampler with guidance off."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY

from godiff_jax import stepped_pt_adatom
from godiff_jax.buffer import add_to_archive, init_archive
from godiff_jax.geometry import clip_per_atom, min_distance
from godiff_jax.guidance import (
    ForceHead,
    force_corrector,
    init_memory,
    lbfgs_step,
    train_force_head,
    two_loop,
)
from godiff_jax.model import ScoreModel, ScoreModelConfig
from godiff_jax.potentials.lj import lj_energy_fn
from godiff_jax.sde import sample_prior
from godiff_jax.search import GODiff
from godiff_jax.system import make_cluster_system
from godiff_jax.train import make_optimizer


def _spd(d, seed):
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T + d * np.eye(d)


def test_two_loop_is_the_inverse_hessian_on_a_quadratic_with_exact_pairs():
    d = 6
    hess = _spd(d, 0)
    # A-conjugate steps (the eigenvectors) with exact curvature y = A s: BFGS keeps every
    # secant condition, so D pairs make H = A^-1 whatever H0 is.
    _, vecs = np.linalg.eigh(hess)
    s = vecs.T * np.arange(1.0, d + 1)[:, None]
    y = s @ hess
    rho = 1.0 / np.sum(s * y, axis=1)
    g = np.random.default_rng(1).normal(size=d)
    out = two_loop(jnp.asarray(g), jnp.asarray(s), jnp.asarray(y), jnp.asarray(rho), d - 1, 0.37)
    np.testing.assert_allclose(np.asarray(out), -np.linalg.solve(hess, g), rtol=1e-9)


def test_two_loop_equals_the_dense_bfgs_recursion_with_fewer_pairs():
    d, m, h0 = 7, 3, 0.2
    rng = np.random.default_rng(2)
    hess = _spd(d, 3)
    s = rng.normal(size=(m, d))
    y = s @ hess
    rho = 1.0 / np.sum(s * y, axis=1)
    h = h0 * np.eye(d)
    for i in range(m):  # oldest first: H <- V^T H V + rho s s^T
        v = np.eye(d) - rho[i] * np.outer(y[i], s[i])
        h = v.T @ h @ v + rho[i] * np.outer(s[i], s[i])
    g = rng.normal(size=d)
    # ring buffer: newest pair in slot 0, so the stored order is rolled
    roll = lambda a: np.roll(a, -(m - 1), axis=0)  # noqa: E731
    out = two_loop(*(jnp.asarray(a) for a in (g, roll(s), roll(y), roll(rho))), 0, h0)
    np.testing.assert_allclose(np.asarray(out), -h @ g, rtol=1e-9)


def test_lbfgs_memory_skips_pairs_without_positive_curvature():
    x0 = jnp.zeros((1, 1, 3))
    mem = init_memory(x0, 4)
    ident = lambda d: d  # noqa: E731
    step = jax.jit(lbfgs_step, static_argnums=(3, 4))
    g0 = jnp.array([[1.0, 0.0, 0.0]])
    d, mem = step(mem, x0.reshape(1, 3), g0, 0.5, ident)
    np.testing.assert_allclose(np.asarray(d), [[-0.5, 0.0, 0.0]])  # H0 = h0 before a pair
    assert int(mem.newest[0]) == -1
    # moving along +x while the gradient drops: s.y < 0, the pair is not stored
    d, mem = step(mem, jnp.array([[1.0, 0.0, 0.0]]), jnp.array([[0.5, 0, 0]]), 0.5, ident)
    assert int(mem.newest[0]) == -1 and np.all(np.asarray(mem.rho) == 0)
    # a convex pair is stored, and H0 becomes s.y / y.y (Barzilai-Borwein)
    d, mem = step(mem, jnp.array([[2.0, 0.0, 0.0]]), jnp.array([[1.0, 0, 0]]), 0.5, ident)
    assert int(mem.newest[0]) == 0
    np.testing.assert_allclose(np.asarray(d), [[-2.0, 0.0, 0.0]], rtol=1e-12)  # 1-D exact


def test_corrector_lowers_a_quadratic_surrogate_to_its_minimum():
    system = make_cluster_system("Pt3", box=8.0)
    x_min = jnp.asarray(np.random.default_rng(0).uniform(11.0, 17.0, size=(2, 3, 3)))
    stiff = jnp.asarray([1.0, 4.0, 9.0])  # eV/Å^2 along x, y, z

    def energy(x):
        return 0.5 * jnp.sum(stiff * (x - x_min) ** 2, axis=(-2, -1))

    forces = lambda x: -stiff * (x - x_min)  # noqa: E731
    corr = force_corrector(forces, system, scale=1.0, per_dt=False, zeta=3.0, max_step=0.1)
    x = x_min + jnp.asarray(np.random.default_rng(1).normal(scale=0.3, size=(2, 3, 3)))
    x_start = x
    state = corr.init(x)
    update = jax.jit(corr.update)
    energies = [np.asarray(energy(x))]
    first = None
    for _ in range(30):
        x_new, state = update(x, jnp.asarray(0.0), jnp.asarray(1.0), state)
        if first is None:
            first = np.asarray(x_new - x)
        x = x_new
        energies.append(np.asarray(energy(x)))
    energies = np.stack(energies)
    # the first step is h0 F (ASE's 1/70 Å^2/eV) with each atom's step at most 0.1 Å
    np.testing.assert_allclose(first, np.asarray(clip_per_atom(forces(x_start) / 70.0, 0.1)))
    # unit quasi-Newton steps without a line search may overshoot now and then, but
    # every iterate is below the start and the last is at the minimum
    assert np.all(energies[1:] < energies[0])
    assert np.all(energies[-1] < 1e-8 * energies[0])  # at the minimum
    # (1 - t)^zeta: at t = 1 the corrector does nothing
    x_t1, _ = update(x + 0.1, jnp.asarray(1.0), jnp.asarray(1.0), corr.init(x))
    np.testing.assert_array_equal(np.asarray(x_t1), np.asarray(x + 0.1))


def test_force_head_learns_an_analytic_potential():
    system = stepped_pt_adatom()
    lj = jax.vmap(jax.value_and_grad(lj_energy_fn(system, epsilon=0.2, sigma=2.2, cutoff=5.0)))
    x = sample_prior(jax.random.PRNGKey(0), system, 2000)
    far = jax.vmap(lambda xi: min_distance(system, xi))(x) > 2.3
    x = x[far][:600]
    energies, grads = lj(x)
    forces = -grads
    archive = init_archive(500, 1)
    archive = add_to_archive(archive, x[:500], energies[:500], forces[:500], np.ones(500, bool), 0)
    model = ScoreModel(system, ScoreModelConfig(features=16, n_blocks=1, n_rbf=12, cutoff=5.0))
    head = ForceHead(16)
    params, head_params = model.init(jax.random.PRNGKey(1)), head.init(jax.random.PRNGKey(2))
    opt = make_optimizer(learning_rate=3e-3, weight_decay=0.0)
    train = jax.jit(
        lambda p, h, a: train_force_head(
            model, head, opt, p, h, jax.random.PRNGKey(3), a, 2000, 16, None
        )
    )  # noqa: E501
    new_params, new_head, stats = train(params, head_params, archive)
    assert not np.asarray(stats.skipped).any()
    pred = head.apply(
        new_head, *model.representation(new_params, model.context(new_params), x[500:])
    )
    rms_error = float(jnp.sqrt(jnp.mean((pred - forces[500:]) ** 2)))
    rms_force = float(jnp.sqrt(jnp.mean(forces[500:] ** 2)))
    assert rms_error < 0.1 * rms_force
    # the representation was trained too, the score head was not
    chex.assert_trees_all_equal(new_params["score_head"], params["score_head"])
    assert not np.array_equal(
        new_params["embedding"]["embedding"], params["embedding"]["embedding"]
    )


@pytest.fixture(scope="module")
def adatom():
    return stepped_pt_adatom()


def test_guidance_off_and_first_iteration_sample_bitwise_as_unguided(adatom):
    plain = GODiff(adatom, TINY)
    guided = GODiff(adatom, TINY.replace(ffg=True, ffg_per_dt=False, ffg_scale=1.0))
    key = jax.random.PRNGKey(4)
    s_plain = plain.init_state(key)
    s_guided = guided.init_state(key)
    chex.assert_trees_all_equal(s_plain.train.params, s_guided.train.params)
    x0, ok0 = jax.jit(plain.sample)(s_plain)
    x1, ok1 = jax.jit(guided.sample)(s_guided)  # iteration 0: guidance off
    np.testing.assert_array_equal(np.asarray(x0), np.asarray(x1))
    np.testing.assert_array_equal(np.asarray(ok0), np.asarray(ok1))
    later = lambda s: s._replace(iteration=s.iteration + 1)  # noqa: E731
    x2, _ = jax.jit(plain.sample)(later(s_plain))
    x3, _ = jax.jit(guided.sample)(later(s_guided))
    assert not np.array_equal(np.asarray(x2), np.asarray(x3))  # on from the second
