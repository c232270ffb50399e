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
    truncated_normal,
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


def _truncnorm_moments(a, b):
    """Mean and standard deviation of N(0, 1) truncated to [a, b] (closed form, float64)."""
    from scipy.special import log_ndtr

    pdf = lambda u: 0.0 if np.isinf(u) else math.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)  # noqa: E731
    if a > 0:  # upper tail: Z = Phi(-a) - Phi(-b) without cancellation
        z = math.exp(log_ndtr(-a)) - math.exp(log_ndtr(-b))
    else:
        z = math.exp(log_ndtr(b)) - math.exp(log_ndtr(a))
    ua = 0.0 if np.isinf(a) else a * pdf(a)
    ub = 0.0 if np.isinf(b) else b * pdf(b)
    mean = (pdf(a) - pdf(b)) / z
    var = 1 + (ua - ub) / z - mean**2
    return mean, math.sqrt(var)


@pytest.mark.parametrize(
    "a, b",
    [
        (-1.5, 0.7),
        (-np.inf, np.inf),
        (-1e4, 0.3),
        (0.0, 1e4),
        (3.0, 5.0),
        (8.0, 9.0),
        (30.0, 31.0),
        (-np.inf, -20.0),
        (-1e-4, 2e-4),
        (0.9, 0.91),
        (0.5, 50.0),
        (1.2, 1e4),
        (-7.0, -6.0),
    ],
)
def test_truncated_normal_matches_its_distribution(a, b):
    """Inside [a, b]; no draw beyond 6.5 sd (of the untruncated normal) from the mean, nor
    beyond where the exact tail mass makes it implausible in n draws; the histogram
    matches the density (chi-square over 20 equal-probability bins of the exact CDF)."""
    from scipy import stats

    n = 1 << 20
    a, b = float(np.float32(a)), float(np.float32(b))  # the bounds the sampler sees
    z = np.asarray(truncated_normal(jax.random.PRNGKey(7), a, b, (n,)), np.float64)
    assert np.all(np.isfinite(z)) and z.min() >= a and z.max() <= b
    mean, sd = _truncnorm_moments(a, b)
    assert np.abs(z - mean).max() <= 6.5
    dist = stats.truncnorm(a, b)
    near = lambda u, bound: abs(u - bound) <= 1e-5 * max(1.0, abs(bound))  # noqa: E731
    assert n * dist.cdf(z.min()) >= 1e-4 or near(z.min(), a)
    assert n * dist.sf(z.max()) >= 1e-4 or near(z.max(), b)
    np.testing.assert_allclose(z.mean(), mean, atol=5 * sd / np.sqrt(n) + 1e-6 * abs(mean))
    edges = dist.ppf(np.linspace(0, 1, 21))
    counts, _ = np.histogram(z, np.concatenate([[-np.inf], edges[1:-1], [np.inf]]))
    chi2 = np.sum((counts - n / 20) ** 2 / (n / 20))
    assert stats.chi2.sf(chi2, 19) > 1e-4, (chi2, counts)


def test_truncated_training_noise_over_2_26_draws():
    """The bug of jax.random.truncated_normal with infinite bounds (-3.4e38 about once in
    2^23 draws): 2^26 noised heptamer coordinates, x0 anywhere in the box (floor and
    ceiling included) and t over [1e-5, 1], stay in the box, finite and within 6.5 sd."""
    system = pt111_heptamer()
    lo, hi = noise_bounds(system)
    sde = VESDE()
    n_atoms = 1 << 12  # per chunk: 4096 structures of one atom, 3 coordinates

    @jax.jit
    def chunk(key):
        k0, k1, k2 = jax.random.split(key, 3)
        z0 = jax.random.uniform(k0, (n_atoms,), minval=lo[2], maxval=hi[2])
        z0 = z0.at[:8].set(lo[2]).at[8:16].set(hi[2])
        x0 = jnp.stack([jnp.zeros(n_atoms), jnp.zeros(n_atoms), z0], -1)[:, None]
        t = jax.random.uniform(k1, (n_atoms,), minval=1e-5, maxval=1.0)
        xt, z = jax.vmap(perturb, (0, None, 0, 0, None))(
            jax.random.split(k2, n_atoms), sde, x0, t, (lo, hi)
        )
        inside = jnp.all((xt[..., 2] >= lo[2] - 1e-4) & (xt[..., 2] <= hi[2] + 1e-4))
        return inside, jnp.all(jnp.isfinite(z)), jnp.max(jnp.abs(z))

    total = 0
    keys = jax.random.split(jax.random.PRNGKey(11), (1 << 26) // (3 * n_atoms) + 1)
    out = jax.lax.map(chunk, keys)
    inside, finite, zmax = (np.asarray(o) for o in out)
    total = len(keys) * n_atoms * 3
    assert total >= 1 << 26
    assert inside.all() and finite.all()
    # z of a coordinate is N(0, 1) truncated to an interval holding 0: |z| <= 6.5 (the
    # truncated sd is <= 1), P(|z| > 6.5) * 2^26 ~ 0.005.
    assert zmax.max() <= 6.5
