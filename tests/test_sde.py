import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from godiff_jax import make_cluster_system, pt111_heptamer
from godiff_jax.sde import (
    VESDE,
    diffusion_sq,
    marginal_var,
    noise_bounds,
    perturb,
    sample_prior,
    sigma,
)


def test_sigma_var_g2_closed_form():
    sde = VESDE(0.01, 1.0)
    t = jnp.array([0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(sigma(sde, t), 0.01 + 0.99 * np.array([0, 0.25, 0.5, 1.0]))
    np.testing.assert_allclose(marginal_var(sde, 0.0), 0.0, atol=1e-15)
    np.testing.assert_allclose(marginal_var(sde, 1.0), 1.0 - 1e-4)
    # g^2 = d sigma^2/dt, checked against autodiff of sigma^2
    dsig2 = jax.vmap(jax.grad(lambda s: sigma(sde, s) ** 2))(t)
    np.testing.assert_allclose(diffusion_sq(sde, t), dsig2, rtol=1e-12)
    # marginal_var(t) = integral_0^t g^2
    np.testing.assert_allclose(marginal_var(sde, 0.5), 0.01 * 0.99 + 0.99**2 * 0.25, rtol=1e-12)


@pytest.mark.parametrize("t", [0.05, 0.5, 1.0])
def test_perturbation_matches_marginal(t):
    sde = VESDE()
    x0 = jnp.array([[1.0, -2.0, 3.0]] * 4)
    keys = jax.random.split(jax.random.PRNGKey(0), 20000)
    xt, z = jax.vmap(perturb, (0, None, None, None))(keys, sde, x0, t)
    np.testing.assert_allclose(xt, x0 + jnp.sqrt(marginal_var(sde, t)) * z, atol=1e-12)
    mean = np.mean(np.asarray(xt), axis=0)
    var = np.var(np.asarray(xt), axis=0)
    np.testing.assert_allclose(mean, x0, atol=4 * np.sqrt(float(marginal_var(sde, t)) / 20000))
    np.testing.assert_allclose(var, float(marginal_var(sde, t)), rtol=0.05)


def test_prior_uniform_in_surface_box():
    system = pt111_heptamer()
    x = np.asarray(sample_prior(jax.random.PRNGKey(1), system, 4000))
    assert x.shape == (4000, 7, 3)
    z = x[..., 2]
    assert z.min() >= system.box_lo[2] - 1e-5 and z.max() <= system.box_hi[2] + 1e-5
    frac = np.linalg.solve(system.cell[:2, :2].T, x[..., :2].reshape(-1, 2).T).T
    assert frac.min() >= -1e-6 and frac.max() <= 1 + 1e-6
    # uniform: the mean fraction is 1/2 and the variance 1/12 on every axis
    np.testing.assert_allclose(frac.mean(0), 0.5, atol=0.01)
    np.testing.assert_allclose(frac.var(0), 1 / 12, atol=0.005)
    zf = (z - system.box_lo[2]) / (system.box_hi[2] - system.box_lo[2])
    np.testing.assert_allclose(zf.mean(), 0.5, atol=0.01)


def test_prior_cluster_box():
    system = make_cluster_system("Pt5", (4.0, 5.0, 6.0))
    x = np.asarray(sample_prior(jax.random.PRNGKey(2), system, 1000))
    assert np.all(x >= system.box_lo - 1e-6) and np.all(x <= system.box_hi + 1e-6)
    np.testing.assert_allclose(
        x.reshape(-1, 3).mean(0), (system.box_lo + system.box_hi) / 2, atol=0.1
    )


@pytest.mark.parametrize("t", [0.2, 1.0])
def test_truncated_perturbation_stays_in_box_with_closed_form_mean(t):
    # x0 0.3 Å above the box floor: z is N(0, 1) truncated at a = (lo - x0) / std, whose
    # mean is phi(a) / (1 - Phi(a)); x/y (infinite bounds) stay plain N(0, 1).
    system = pt111_heptamer()
    lo, hi = noise_bounds(system)
    assert np.all(np.isinf(lo[:2])) and lo[2] == system.box_lo[2] and hi[2] == system.box_hi[2]
    sde = VESDE()
    x0 = jnp.array([[1.0, 2.0, lo[2] + 0.3]], jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(3), 40000)
    xt, z = jax.vmap(perturb, (0, None, None, None, None))(keys, sde, x0, t, (lo, hi))
    xt, z = np.asarray(xt)[:, 0], np.asarray(z)[:, 0]
    std = float(np.sqrt(marginal_var(sde, t)))
    np.testing.assert_allclose(xt, np.asarray(x0)[0] + std * z, atol=1e-5)
    assert xt[:, 2].min() >= lo[2] - 1e-5 and xt[:, 2].max() <= hi[2] + 1e-5
    a = -0.3 / std
    b = (hi[2] - lo[2] - 0.3) / std
    pdf = lambda u: math.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda u: 0.5 * (1 + math.erf(u / math.sqrt(2)))  # noqa: E731
    mean = (pdf(a) - pdf(b)) / (cdf(b) - cdf(a))
    np.testing.assert_allclose(z[:, 2].mean(), mean, atol=0.02)
    np.testing.assert_allclose(z[:, :2].mean(0), 0.0, atol=0.02)
    np.testing.assert_allclose(z[:, :2].std(0), 1.0, atol=0.02)


def test_cluster_noise_bounds_are_the_box():
    system = make_cluster_system("Pt5", (4.0, 5.0, 6.0))
    lo, hi = noise_bounds(system)
    np.testing.assert_array_equal(lo, system.box_lo)
    np.testing.assert_array_equal(hi, system.box_hi)
