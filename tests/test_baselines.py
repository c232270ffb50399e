"""The AGOX-style baselines: BFGS against ASE, the box constraint, the generators' rules,
the evaluation counter and the success test on every evaluated structure."""

import functools
from pathlib import Path

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.geometry import get_distances
from ase.optimize import BFGS

from godiff_jax.analysis import _is_wheel_batch, heptamer_success_batch
from godiff_jax.ase_interop import EMTCalculator, to_atoms
from godiff_jax.baselines import (
    AgoxSettings,
    agox_confinement,
    make_box_constraint,
    make_random_generator,
    make_rattle,
    make_search,
    relaxation_stats,
    run_search,
    score,
)
from godiff_jax.bfgs import bfgs_init, bfgs_relax, bfgs_relax_batch, bfgs_step
from godiff_jax.potentials.emt import emt_energy_fn
from godiff_jax.relax import energy_forces_fn
from godiff_jax.system import pt111_heptamer, stepped_pt_adatom

DATA = Path(__file__).parent / "data"
PT_BOND_MIN = 0.75 * 2 * 1.36  # c1 * (r_cov + r_cov), Å
PT_BOND_MAX = 1.25 * 2 * 1.36  # c2 * (r_cov + r_cov)


@pytest.fixture(scope="module")
def heptamer():
    system = pt111_heptamer()
    x = np.asarray(ase.io.read(DATA / "pt7_pt111_emt_minimum.extxyz").positions[-7:])
    return system, emt_energy_fn(system), x


def _lifted_hub(x_min):
    """The island with its centre atom 1.5 Å up: no longer the wheel graph (the hub is
    3.1 Å from the rim), and BFGS brings it back down."""
    x = x_min.copy()
    hub = np.argmin(np.linalg.norm(x - x.mean(axis=0), axis=1))
    x[hub, 2] += 1.5
    return x


@functools.lru_cache
def _box(system):
    """One constraint object per system, so that compiled programs are reused."""
    return make_box_constraint(system)


@functools.lru_cache
def _frames_fn(energy_fn, constraint):
    ef = energy_forces_fn(energy_fn)

    @functools.partial(jax.jit, static_argnums=1)
    def frames(x, n):
        def body(s, _):
            s = bfgs_step(s, ef, constraint=constraint)
            return s, (s.x, s.energy)

        s0 = bfgs_init(ef, x, constraint=constraint)
        _, (xs, es) = jax.lax.scan(body, s0, None, n)
        return jnp.concatenate([x[None], xs]), jnp.concatenate([s0.energy[None], es])

    return frames


def _bfgs_frames(energy_fn, x0, n, constraint=None):
    """Positions and energies of the start and of each of n BFGS steps (a scan)."""
    xs, es = _frames_fn(energy_fn, constraint)(jnp.asarray(x0), n)
    return np.asarray(xs), np.asarray(es)


def test_bfgs_matches_ase_bfgs_step_for_step_on_ase_emt(heptamer):
    system, energy_fn, x_min = heptamer
    x0 = x_min + 0.08 * np.random.default_rng(3).normal(size=x_min.shape)
    atoms = to_atoms(system, x0)
    atoms.calc = EMT()
    f0 = atoms.get_forces()[-7:]
    frames = []
    opt = BFGS(atoms, logfile=None)
    opt.attach(lambda: frames.append(atoms.positions[-7:].copy()))
    opt.run(fmax=0.05, steps=200)
    assert 5 < opt.nsteps < 200  # it converged, after some steps
    res = bfgs_relax(energy_fn, x0, fmax=0.05, max_steps=200)
    assert int(res.n_steps) == opt.nsteps and bool(res.converged)
    assert float(res.energy) == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
    xs, es = _bfgs_frames(energy_fn, x0, opt.nsteps)
    np.testing.assert_allclose(xs, np.stack(frames), atol=1e-7)
    np.testing.assert_allclose(np.asarray(res.positions), frames[-1], atol=1e-7)
    # the first step is the initial Hessian's: a steepest-descent step of f / 70, scaled so
    # that no atom moves more than 0.2 Å
    dr = f0 / 70.0
    dr *= min(1.0, 0.2 / np.linalg.norm(dr, axis=1).max())
    np.testing.assert_allclose(xs[1] - xs[0], dr, atol=1e-9)


def test_bfgs_batch_stops_each_structure_at_its_own_step(heptamer):
    system, energy_fn, x_min = heptamer
    rng = np.random.default_rng(4)
    xs = np.stack([x_min + s * rng.normal(size=x_min.shape) for s in (0.02, 0.06, 0.12)])
    batch = bfgs_relax_batch(energy_fn, xs, fmax=0.05, max_steps=300)
    steps = np.asarray(batch.n_steps)
    assert len(set(steps.tolist())) == 3 and np.all(np.asarray(batch.converged))
    for i in range(3):
        one = bfgs_relax(energy_fn, xs[i], fmax=0.05, max_steps=300)
        assert int(one.n_steps) == steps[i]
        np.testing.assert_allclose(np.asarray(batch.positions[i]), one.positions, atol=1e-10)
    capped = bfgs_relax_batch(energy_fn, xs, fmax=0.05, max_steps=4)
    np.testing.assert_array_equal(np.asarray(capped.n_steps), np.minimum(steps, 4))


def test_box_constraint_rules_by_hand():
    system = pt111_heptamer()
    conf = agox_confinement(system)
    z0, h = system.box_lo[2], system.box_hi[2] - system.box_lo[2]
    assert h == pytest.approx(5.0) and conf.corner[2] == pytest.approx(z0)
    c = _box(system)
    centre = 0.5 * (system.cell[0] + system.cell[1])[:2]
    old = np.array(
        [
            [*centre, z0 + 2.0],  # steps above the box
            [0.05, 0.0, z0 + 2.0],  # steps out of the cell in x (fractional < 0)
            [*(centre + 1.0), z0 + 2.0],  # stays inside
        ]
    )
    new = old + np.array([[0.1, 0.1, 3.5], [-0.2, 0.0, 0.3], [0.1, -0.1, 0.2]])
    got = np.asarray(c.adjust_positions(jnp.asarray(old), jnp.asarray(new)))
    np.testing.assert_allclose(got[0], [new[0, 0], new[0, 1], old[0, 2]])  # z kept
    np.testing.assert_allclose(got[1], [new[1, 0], new[1, 1], old[1, 2]])  # z kept, x moves on
    np.testing.assert_allclose(got[2], new[2])
    # forces along z scale from 1 at 5 % (95 %) of the box height to 0 at 0.1 % (99.9 %)
    x = np.array([[*centre, z0 + 0.97 * h], [*centre, z0 + 0.02 * h], [*centre, z0 + 0.5 * h]])
    f = np.array([[1.0, 2.0, -3.0]] * 3)
    got = np.asarray(c.adjust_forces(jnp.asarray(x), jnp.asarray(f)))
    np.testing.assert_allclose(got[:, :2], f[:, :2])
    np.testing.assert_allclose(
        got[:, 2], [-3.0 * (0.999 - 0.97) / 0.049, -3.0 * (0.02 - 0.001) / 0.049, -3.0]
    )


class _AseWrapped:
    """An ASE constraint on the last n atoms that calls the JAX constraint: ASE's BFGS
    then decides where constraints apply, so the test checks our BFGS's plumbing."""

    def __init__(self, constraint, n):
        self.c, self.n = constraint, n

    def adjust_positions(self, atoms, new):
        new[-self.n :] = np.asarray(
            self.c.adjust_positions(atoms.positions[-self.n :], new[-self.n :])
        )

    def adjust_forces(self, atoms, forces):
        forces[-self.n :] = np.asarray(
            self.c.adjust_forces(atoms.positions[-self.n :], forces[-self.n :])
        )

    def get_removed_dof(self, atoms):
        return 0

    def todict(self):
        return {"name": "_AseWrapped", "kwargs": {}}


@pytest.mark.parametrize(
    "start",
    [
        (0.5, 0.5, 0.975),  # inside the upper soft wall: z-forces scaled
        (0.999, 0.5, 0.5),  # at the cell's edge: steps out in x, its z then stays put
    ],
)
def test_bfgs_with_box_constraint_matches_ase_with_it(start):
    system = stepped_pt_adatom()
    conf = agox_confinement(system)
    x0 = (conf.corner + np.asarray(start) @ conf.cell)[None]
    constraint = _box(system)
    atoms = to_atoms(system, x0)
    atoms.set_constraint(
        [FixAtoms(indices=np.arange(system.n_template)), _AseWrapped(constraint, 1)]
    )
    atoms.calc = EMTCalculator()
    frames = []
    opt = BFGS(atoms, logfile=None)
    opt.attach(lambda: frames.append(atoms.positions[-1:].copy()))
    opt.run(fmax=0.05, steps=60)
    xs, _ = _bfgs_frames(emt_energy_fn(system), x0, opt.nsteps, constraint)
    np.testing.assert_allclose(xs, np.stack(frames), atol=1e-8)
    frac = (xs[:, 0] - conf.corner) @ np.linalg.inv(conf.cell)
    if start[0] > 0.99:  # it did leave the box in x, and from then on z never changed
        out = np.flatnonzero(frac[:, 0] >= 1)
        assert out.size and np.ptp(xs[out[0] - 1 :, 0, 2]) == 0.0
    else:
        assert xs[-1, 0, 2] < xs[0, 0, 2] - 0.5  # the adatom came down


def test_random_generator_obeys_agox_distance_rules():
    system = pt111_heptamer()
    conf = agox_confinement(system)
    for contiguous in (True, False):
        gen = make_random_generator(system, AgoxSettings(contiguous=contiguous))
        xs, ok = jax.jit(jax.vmap(gen))(jax.random.split(jax.random.PRNGKey(7), 24))
        xs = np.asarray(xs)
        assert np.all(np.asarray(ok))
        assert len({tuple(np.round(x[0], 6)) for x in xs}) == len(xs)  # all different
        frac = (xs - conf.corner) @ np.linalg.inv(conf.cell)
        assert np.all((frac > 0) & (frac < 1))
        for x in xs:
            atoms = to_atoms(system, x)
            n_t = system.n_template
            _, d = get_distances(x, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
            d[np.arange(7), n_t + np.arange(7)] = np.inf  # no atom with itself
            assert d.min() >= PT_BOND_MIN
            bonded = d <= PT_BOND_MAX
            assert bonded[:, :n_t].any()  # the first atom placed bonds to the surface
            assert bonded.any(axis=1).all()  # every atom bonds to something
            if contiguous:  # every atom hangs on the island grown from the first
                adj, seen = bonded[:, n_t:], np.zeros(7, bool)
                stack = list(np.flatnonzero(bonded[:, :n_t].any(axis=1)))
                while stack:
                    k = stack.pop()
                    if not seen[k]:
                        seen[k] = True
                        stack.extend(np.flatnonzero(adj[k] & ~seen))
                assert seen.all()
        spread = frac[..., 2].std()
        assert spread > 0.05  # placements fill the box height, not one layer only


def test_rattle_moves_about_three_atoms_within_three_angstrom(heptamer):
    system, _, x_min = heptamer
    rattle = make_rattle(system)
    keys = jax.random.split(jax.random.PRNGKey(11), 64)
    out = np.asarray(jax.jit(jax.vmap(rattle, in_axes=(0, None)))(keys, jnp.asarray(x_min)))
    moved = np.linalg.norm(out - x_min, axis=-1)  # [64, 7]
    n_moved = (moved > 0).sum(axis=1)
    assert n_moved.min() >= 1  # at least one atom always moves
    assert 2.3 < n_moved.mean() < 3.7  # each picked with probability 3/7
    assert moved.max() <= 3.0 + 1e-12
    for x in out:
        atoms = to_atoms(system, x)
        _, d = get_distances(x, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        d[np.arange(7), system.n_template + np.arange(7)] = np.inf
        assert d.min() >= PT_BOND_MIN - 1e-9 or np.allclose(x, x_min)


def _planted(x):
    return lambda key: (jnp.asarray(x), jnp.asarray(True))


def test_counter_counts_every_relaxation_step_and_tests_every_structure(heptamer):
    """A planted start relaxes in n BFGS steps: its relaxation costs n + 1 evaluations
    (the start and one after each step, as AGOX stores them), the next relaxation starts
    at evaluation n + 2, and the success test sees every one of those structures and
    reports the first wheel (and strict) success at that structure's evaluation number."""
    system, energy_fn, x_min = heptamer
    x_p = _lifted_hub(x_min)
    settings = AgoxSettings()
    init, tick = make_search(system, energy_fn, settings, "rss", generate=_planted(x_p))
    total = 160
    trace = run_search(init, tick, [0], total, chunk=total)
    frame = trace.frame[0]
    n = int(np.flatnonzero(frame == 0)[1]) - 1  # BFGS steps of the first relaxation
    assert 5 < n < 70
    period = np.arange(total) % (n + 1)  # every relaxation is the same, n + 1 evaluations
    np.testing.assert_array_equal(frame, period)
    np.testing.assert_allclose(trace.energy[0], trace.energy[0, period], atol=0)

    # the same relaxation apart: BFGS from x_p, converged (max force < fmax) at step n only
    xs, es = _bfgs_frames(energy_fn, x_p, n, _box(system))
    np.testing.assert_allclose(trace.positions[0, : n + 1], xs, atol=1e-10)
    np.testing.assert_allclose(trace.energy[0, : n + 1], es, atol=1e-10)
    forces = -np.asarray(jax.jit(jax.vmap(jax.grad(energy_fn)))(jnp.asarray(xs)))
    forces = np.asarray(jax.vmap(_box(system).adjust_forces)(jnp.asarray(xs), jnp.asarray(forces)))
    fmax = np.linalg.norm(forces, axis=-1).max(axis=-1)
    assert fmax[n] < settings.fmax and np.all(fmax[:n] >= settings.fmax)
    wheel = np.asarray(_is_wheel_batch(system, jnp.asarray(xs)))
    assert not wheel[0] and wheel[-1]

    seen = []

    def tests(x, e):
        seen.append(len(x))
        ok, info = heptamer_success_batch(system, x, energy_fn)
        return {"strict": ok, "graph": info["wheel"]}

    rows, grid, curves = score(trace, [0], tests, 24.9874, settings.max_steps)
    assert seen == [total]  # every evaluated structure, relaxation steps included
    assert rows[0]["first_success_graph"] == int(np.argmax(wheel)) + 1 > 1
    assert rows[0]["first_success_graph"] <= rows[0]["first_success_strict"] <= n + 1
    assert rows[0]["iterations"] == len(np.flatnonzero(frame == 0))
    assert rows[0]["mean_relax_steps"] == n
    assert rows[0]["best_energy_above_min"] == pytest.approx(es.min() - 24.9874, abs=1e-10)
    assert curves.shape == (1, len(grid)) and curves[0, -1] == pytest.approx(es.min() - 24.9874)


def test_step_cap_ends_relaxations_at_cap_plus_one_evaluations():
    system = stepped_pt_adatom()
    energy_fn = emt_energy_fn(system)
    settings = AgoxSettings(max_steps=3, fmax=1e-4)
    init, tick = make_search(system, energy_fn, settings, "rss")
    trace = run_search(init, tick, [0, 1], 40, chunk=40)
    for s in range(2):
        frame = trace.frame[s]
        starts = np.flatnonzero(frame == 0)
        # fmax 1e-4 is out of reach in 3 steps: every relaxation is 4 evaluations
        np.testing.assert_array_equal(starts, np.arange(0, 40, 4))
        np.testing.assert_array_equal(frame, np.tile(np.arange(4), 10))
        for k in starts[:3]:  # the machine's relaxation is BFGS from that start
            xs, es = _bfgs_frames(energy_fn, trace.positions[s, k], 3, _box(system))
            np.testing.assert_allclose(trace.positions[s, k : k + 4], xs, atol=1e-10)
            np.testing.assert_allclose(trace.energy[s, k : k + 4], es, atol=1e-10)
        assert relaxation_stats(frame, 3)["n_capped"] == 10


@pytest.mark.parametrize("kT", [1e-9, 1e9])
def test_basin_hopping_metropolis(kT):
    """kT -> 0: the current structure is the lowest relaxation so far; kT -> infinity:
    every finished relaxation is accepted."""
    system = stepped_pt_adatom()
    settings = AgoxSettings(temperature=kT, max_steps=20)
    init, tick = make_search(system, emt_energy_fn(system), settings, "basin_hopping")
    trace = run_search(init, tick, [0], 120, chunk=120)
    frame, e, current = trace.frame[0], trace.energy[0], trace.current_energy[0]
    starts = np.flatnonzero(frame == 0)
    assert len(starts) >= 6
    lows = [e[a:b].min() for a, b in zip(starts[:-1], starts[1:], strict=True)]
    if kT < 1:
        # at the start of relaxation j the current structure is the lowest of the first j
        np.testing.assert_allclose(current[starts[1:]], np.minimum.accumulate(lows), atol=0)
        assert len(set(np.round(lows, 6))) > 1  # the rattles led to different minima
    else:
        np.testing.assert_allclose(current[starts[1:]], lows, atol=0)
        assert int(trace.n_accepted[0]) == len(starts) - 1
