import jax
import jax.numpy as jnp
import numpy as np

from godiff_jax import make_cluster_system, pt111_heptamer
from godiff_jax.sampler import reverse_sample, reverse_times
from godiff_jax.sde import VESDE, marginal_var


def test_reverse_times():
    ts, dt = reverse_times(500, 0.005)
    assert ts.shape == (500,)
    np.testing.assert_allclose([ts[0], ts[-1]], [1.0, 0.005], rtol=1e-6)
    np.testing.assert_allclose(ts[:-1] - ts[1:], dt, rtol=1e-4)


def test_exact_gaussian_score_reproduces_mean_and_variance():
    """Data N(mu, s0^2) has marginal N(mu, s0^2 + var(t)); with that exact score and the
    matching start, the reverse SDE must return N(mu, s0^2 + var(t_end))."""
    sde = VESDE()
    mu = jnp.array([5.0, 6.0, 7.0])
    s0 = 0.3
    system = make_cluster_system("Pt", 1000.0, vacuum=0.0)  # box far larger than the spread

    def score(x, t):
        v = s0**2 + marginal_var(sde, t)[:, None, None]
        return -(x - mu) / v

    n = 20000
    key_init, key = jax.random.split(jax.random.PRNGKey(0))
    std1 = jnp.sqrt(s0**2 + marginal_var(sde, 1.0))
    x_init = mu + std1 * jax.random.normal(key_init, (n, 1, 3), jnp.float64)
    x = reverse_sample(key, score, system, n, n_steps=500, t_end=0.005, sde=sde, x_init=x_init)
    x = np.asarray(x).reshape(n, 3)
    target_var = s0**2 + float(marginal_var(sde, 0.005))
    np.testing.assert_allclose(x.mean(0), mu, atol=0.01)
    np.testing.assert_allclose(x.var(0), target_var, rtol=0.05)


def test_samples_are_confined_and_deterministic_per_key():
    system = pt111_heptamer()

    def wild_score(x, t):  # pushes atoms far out of the box
        return jnp.full_like(x, 100.0)

    x = reverse_sample(jax.random.PRNGKey(3), wild_score, system, 8, n_steps=10)
    z = np.asarray(x[..., 2])
    assert np.all(z >= system.box_lo[2] - 1e-5) and np.all(z <= system.box_hi[2] + 1e-5)
    frac = np.linalg.solve(system.cell[:2, :2].T, np.asarray(x[..., :2]).reshape(-1, 2).T)
    assert frac.min() >= -1e-5 and frac.max() < 1 + 1e-5
    x2 = reverse_sample(jax.random.PRNGKey(3), wild_score, system, 8, n_steps=10)
    np.testing.assert_array_equal(x, x2)


def test_corrector_is_an_init_update_pair_and_a_no_op_one_changes_nothing():
    from godiff_jax.sampler import Corrector

    system = pt111_heptamer()
    seen = {"init": [], "update": 0}

    def init(x):
        seen["init"].append(x.shape)
        return jnp.zeros(x.shape[0], jnp.int32)  # e.g. a per-structure memory

    def update(x, t, dt, state):
        seen["update"] += 1  # traced once: the scan body
        return x, state + 1

    key = jax.random.PRNGKey(4)
    score = lambda x, t: -0.1 * x  # noqa: E731
    plain = reverse_sample(key, score, system, 3, n_steps=6)
    guided = reverse_sample(key, score, system, 3, n_steps=6, corrector=Corrector(init, update))
    np.testing.assert_array_equal(np.asarray(guided), np.asarray(plain))
    assert seen == {"init": [(3, 7, 3)], "update": 1}


def test_a_structure_enters_the_reverse_sde_at_its_start_time():
    """Rows starting at t = 1 are the plain run's rows bitwise; a row starting below the
    last time is never moved; with a zero score a row entering at t0 ends with the variance
    the noised steps at t_i <= t0 add (sum of g(t_i)^2 dt), not the whole trajectory's."""
    sde = VESDE()
    system = make_cluster_system("Pt", 1000.0, vacuum=0.0)  # nothing reaches the box walls
    n, n_steps, t0 = 6000, 50, 0.5

    def zero(x, t):
        return jnp.zeros_like(x)

    key = jax.random.PRNGKey(5)
    x0 = jnp.full((n, 1, 3), 500.0)
    t_start = jnp.tile(jnp.array([1.0, t0, 0.0]), n // 3)
    plain = reverse_sample(key, zero, system, n, n_steps=n_steps, sde=sde, x_init=x0)
    mixed = reverse_sample(
        key, zero, system, n, n_steps=n_steps, sde=sde, x_init=x0, t_start=t_start
    )
    np.testing.assert_array_equal(mixed[0::3], plain[0::3])
    np.testing.assert_array_equal(mixed[2::3], x0[2::3])
    ts, dt = reverse_times(n_steps)
    g2 = (
        2.0
        * (sde.sigma_min + (sde.sigma_max - sde.sigma_min) * ts)
        * (sde.sigma_max - sde.sigma_min)
    )
    noised = (ts <= t0) & (jnp.arange(n_steps) < n_steps - 1)
    expected = float(jnp.sum(jnp.where(noised, g2 * dt, 0.0)))
    assert expected < 0.3 * float(jnp.sum(g2[:-1] * dt))  # far from the whole trajectory's
    np.testing.assert_allclose(np.var(np.asarray(mixed[1::3] - 500.0)), expected, rtol=0.05)
