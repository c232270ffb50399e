"""Random structure search and basin hopping as AGOX runs them, in JAX, seeds vmapped.

The pieces follow AGOX 3.11 (the code the paper ran its RSS baseline with); the facts
(defaults, rules) are in `AGOX_DEFAULTS` with the files they come from, the code is ours:

- `make_random_generator`: AGOX's `RandomGenerator`. Atoms are placed one at a time in a
  random order; the first uniformly in the confinement box, each next one (contiguous, the
  default) at a distance r from a random already placed mobile atom, r^3 uniform in
  [r_min^3, r_max^3], direction from theta ~ U[0, 2 pi), phi ~ U[0, pi] (AGOX's, not uniform
  on the sphere). A position is kept when it lies strictly inside the box and no atom
  (template or placed, minimum image) is closer than r_min = c1 (r_cov_i + r_cov_j) while at
  least one is within r_max = c2 (r_cov_i + r_cov_j); each atom gets `attempts` tries, and
  a structure whose atom fails all of them is dropped (AGOX's iteration then evaluates
  nothing) and drawn again.
- `make_rattle`: AGOX's `RattleGenerator`: each mobile atom is picked with probability
  n_rattle / n_mobile (one at random if none is), and each picked atom, in random order,
  moves by a displacement of length amplitude * U^(1/3) in AGOX's direction, kept at the
  first of `attempts` tries that passes the same box and distance rules (itself skipped).
- `make_box_constraint`: AGOX's `BoxConstraint` during relaxation, as its surface examples
  pass it to the evaluator: after a step, an atom outside the box (any fractional box
  coordinate outside (0, 1), periodic axes included) keeps its old coordinates along the
  box's non-periodic axes; a force along those axes is scaled down linearly within 5 % of
  a wall (to 0 at 0.1 %). AGOX does not wrap positions, so a surface atom that crosses the
  cell's edge in x/y keeps its height from then on, and its relaxation runs to the step
  cap (`relaxation_stats` counts those).
- Local relaxation: ASE's BFGS (`godiff_jax.bfgs`), the default optimiser of AGOX's
  `LocalOptimizationEvaluator`, to `fmax` or `max_steps` steps.
- Basin hopping: AGOX's `MetropolisSampler`: after each relaxation its lowest single point
  replaces the current structure if lower, else with probability exp(-dE / kT); the next
  structure is a rattle of the current one (the very first is a random structure).

Counting, as AGOX's database and its analysis count (the evaluator stores every step of
a relaxation, `store_trajectory=True` by default): every single point is one evaluation,
so a relaxation of n BFGS steps costs n + 1 (the start and one after each step). The
search is a machine that makes exactly one evaluation per tick for every seed: a tick
either starts a new structure (the previous relaxation converged or hit its step cap) or
takes the next BFGS step, so evaluation k of a seed is its tick k and `Trace` holds every
evaluated structure in order for the success tests (`score`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import ase.data
import jax
import jax.numpy as jnp
import numpy as np

from godiff_jax.bfgs import Bfgs, BfgsState, Constraint, bfgs_propose, bfgs_start, bfgs_update
from godiff_jax.geometry import image_distances
from godiff_jax.relax import EnergyFn, _max_force, energy_forces_fn
from godiff_jax.report import SuccessTests, best_curve
from godiff_jax.system import System

_AGOX = "agox-3.11.0/agox/"
# name -> (value, where AGOX sets it); what the baselines run with unless told otherwise.
AGOX_DEFAULTS: dict[str, tuple[object, str]] = {
    "c1": (0.75, _AGOX + "generators/ABC_generator.py GeneratorBaseClass(c1=0.75)"),
    "c2": (1.25, _AGOX + "generators/ABC_generator.py GeneratorBaseClass(c2=1.25)"),
    "attempts": (100, _AGOX + "generators/random.py RandomGenerator(attempts=100)"),
    "contiguous": (True, _AGOX + "generators/random.py RandomGenerator(contiguous=True)"),
    "optimizer": ("BFGS", _AGOX + "evaluators/local_optimization.py optimizer=BFGS (ASE)"),
    "maxstep": (0.2, "ase/optimize/bfgs.py BFGS defaults (maxstep 0.2 Å)"),
    "alpha": (70.0, "ase/optimize/bfgs.py BFGS defaults (alpha 70 eV/Å^2)"),
    "fmax": (
        0.05,
        _AGOX + "test/run_tests/tests_rss/script_rss_surface_emt.py, tests_bh/"
        "script_bh_surface_emt.py, docs/source/getting_started/rss_script_single.py",
    ),
    "max_steps": (400, "agox-3.11.0/docs/source/getting_started/rss_script_single.py"),
    # Not used, for the record: the evaluator's own defaults, and the examples' step cap.
    "evaluator_class_fmax_steps": (
        (0.25, 200),
        _AGOX + "evaluators/local_optimization.py optimizer_run_kwargs default",
    ),
    "examples_steps": (5, _AGOX + "test/run_tests/tests_{rss,bh}/*.py ('100+ more realistic')"),
    "examples_contiguous": (False, _AGOX + "test/run_tests/tests_rss/script_rss_surface_emt.py"),
    "examples_store_trajectory": (
        False,
        _AGOX + "test/run_tests/tests_{rss,bh}/*.py (would count one per relaxation)",
    ),
    "box_constraint": (
        True,
        _AGOX + "environments/ABC_environment.py get_constraints() (BoxConstraint), "
        "passed to the evaluator in the surface examples",
    ),
    "store_trajectory": (True, _AGOX + "evaluators/local_optimization.py (every step stored)"),
    "n_rattle": (3, _AGOX + "generators/rattle.py RattleGenerator(n_rattle=3)"),
    "rattle_amplitude": (3.0, _AGOX + "generators/rattle.py RattleGenerator(rattle_amplitude=3)"),
    "temperature": (
        0.25,
        _AGOX + "test/run_tests/tests_bh/script_bh_*_emt.py MetropolisSampler(temperature=0.25)",
    ),
}


class AgoxSettings(NamedTuple):
    """The baselines' settings (defaults: `AGOX_DEFAULTS`)."""

    c1: float = 0.75  # r_min = c1 * (r_cov_i + r_cov_j)
    c2: float = 1.25  # r_max = c2 * (r_cov_i + r_cov_j)
    attempts: int = 100  # tries per atom
    contiguous: bool = True  # each atom after the first next to a placed one
    fmax: float = 0.05  # eV/Å
    max_steps: int = 400  # BFGS steps per relaxation
    maxstep: float = 0.2  # Å
    alpha: float = 70.0  # eV/Å^2
    box_constraint: bool = True  # AGOX's BoxConstraint during relaxation
    n_rattle: int = 3  # mean number of atoms rattled
    rattle_amplitude: float = 3.0  # Å
    temperature: float = 0.25  # Metropolis kT, eV


DEFAULT_SETTINGS = AgoxSettings()

# The soft walls of AGOX's BoxConstraint: forces scale linearly from 1 at 5 % (95 %) of the
# box to 0 at 0.1 % (99.9 %), the lines AGOX fits with np.polyfit.
_LOWER = np.polyfit([0.05, 0.001], [1.0, 0.0], 1)
_UPPER = np.polyfit([0.95, 0.999], [1.0, 0.0], 1)


class Confinement(NamedTuple):
    """AGOX's confinement box: positions x = corner + frac @ cell, inside for frac in (0, 1)."""

    cell: np.ndarray  # [3, 3] Å, rows are the box vectors
    corner: np.ndarray  # [3] Å
    pbc: tuple[bool, bool, bool]  # periodic axes of the box (the BoxConstraint's)


def agox_confinement(system: System) -> Confinement:
    """The box an AGOX user writes for `system`: a surface's box spans the cell in x/y
    (periodic) and [box_lo, box_hi] in z, as in AGOX's surface examples; a cluster's is
    the axis-aligned [box_lo, box_hi], not periodic."""
    lo = np.asarray(system.box_lo, float)
    hi = np.asarray(system.box_hi, float)
    if system.mode == "surface":
        cell = np.array([system.cell[0], system.cell[1], [0.0, 0.0, hi[2] - lo[2]]], float)
        return Confinement(cell, np.array([0.0, 0.0, lo[2]]), (True, True, False))
    return Confinement(np.diag(hi - lo), lo, (False, False, False))


def _fractional(conf: Confinement, x: jnp.ndarray) -> jnp.ndarray:
    inv = jnp.asarray(np.linalg.inv(conf.cell), x.dtype)
    return (x - jnp.asarray(conf.corner, x.dtype)) @ inv


def _inside(conf: Confinement, x: jnp.ndarray) -> jnp.ndarray:
    frac = _fractional(conf, x)
    return jnp.all((frac > 0) & (frac < 1), axis=-1)


def _direction(key, dtype) -> jnp.ndarray:
    """AGOX's displacement direction in 3D: theta ~ U[0, 2 pi), phi ~ U[0, pi]."""
    k1, k2 = jax.random.split(key)
    theta = jax.random.uniform(k1, (), dtype, 0.0, 2.0 * np.pi)
    phi = jax.random.uniform(k2, (), dtype, 0.0, np.pi)
    return jnp.stack([jnp.cos(theta) * jnp.sin(phi), jnp.sin(theta) * jnp.sin(phi), jnp.cos(phi)])


class _Rules(NamedTuple):
    """What the placement rules need, as arrays closed over by the generators."""

    template: np.ndarray  # [T, 3] Å
    r_min_t: np.ndarray  # [M, T] Å, mobile i to template atom
    r_max_t: np.ndarray  # [M, T]
    r_min_m: np.ndarray  # [M, M] Å, mobile i to mobile j
    r_max_m: np.ndarray  # [M, M]
    cell: np.ndarray
    pbc: tuple[bool, bool, bool]


def _rules(system: System, c1: float, c2: float) -> _Rules:
    r_m = ase.data.covalent_radii[np.asarray(system.mobile_numbers, int)]
    r_t = ase.data.covalent_radii[np.asarray(system.template_numbers, int)]
    pair_t = r_m[:, None] + r_t[None, :]
    pair_m = r_m[:, None] + r_m[None, :]
    pbc = system.pbc if system.mode == "surface" else (False, False, False)
    return _Rules(
        template=np.asarray(system.template_positions, float).reshape(-1, 3),
        r_min_t=c1 * pair_t,
        r_max_t=c2 * pair_t,
        r_min_m=c1 * pair_m,
        r_max_m=c2 * pair_m,
        cell=np.asarray(system.cell, float),
        pbc=tuple(bool(p) for p in pbc),
    )


def _position_ok(rules: _Rules, i, p, x, others) -> jnp.ndarray:
    """AGOX's distance rule for mobile atom i at p [3] among the template and the mobile
    atoms x [M, 3] where `others` [M] is True: none closer than r_min, one within r_max."""
    dtype = p.dtype
    parts_d, parts_min, parts_max, parts_use = [], [], [], []
    if len(rules.template):
        parts_d.append(
            jnp.min(
                image_distances(p[None], jnp.asarray(rules.template, dtype), rules.cell, rules.pbc),
                axis=0,
            )[0]
        )
        parts_min.append(jnp.asarray(rules.r_min_t, dtype)[i])
        parts_max.append(jnp.asarray(rules.r_max_t, dtype)[i])
        parts_use.append(jnp.ones(len(rules.template), bool))
    parts_d.append(jnp.min(image_distances(p[None], x, rules.cell, rules.pbc), axis=0)[0])
    parts_min.append(jnp.asarray(rules.r_min_m, dtype)[i])
    parts_max.append(jnp.asarray(rules.r_max_m, dtype)[i])
    parts_use.append(others)
    d, r_min, r_max, use = (jnp.concatenate(v) for v in (parts_d, parts_min, parts_max, parts_use))
    too_close = jnp.any(use & (d < r_min))
    bonded = jnp.any(use & (d <= r_max))
    return ~too_close & bonded


def make_random_generator(
    system: System, settings: AgoxSettings = DEFAULT_SETTINGS, max_redraws: int = 1000
) -> Callable[[jax.Array], tuple[jnp.ndarray, jnp.ndarray]]:
    """key -> (mobile positions [M, 3] Å, ok []): AGOX's RandomGenerator (module doc).

    A structure whose placement fails is drawn again, up to `max_redraws` times; ok is
    False only if every draw failed (the box cannot hold the atoms)."""
    conf = agox_confinement(system)
    rules = _rules(system, settings.c1, settings.c2)
    m = system.n_mobile
    no_template = system.n_template == 0

    def place_atom(k, carry):
        x, placed, ok, order, key = carry
        i = order[k]
        key_atom = jax.random.fold_in(key, k)

        def attempt(state):
            n, _, _ = state
            kb, kj, kr, kd = jax.random.split(jax.random.fold_in(key_atom, n), 4)
            box = jax.random.uniform(kb, (3,), x.dtype) @ jnp.asarray(conf.cell, x.dtype)
            box = box + jnp.asarray(conf.corner, x.dtype)
            j = order[jax.random.randint(kj, (), 0, jnp.maximum(k, 1))]
            lo3 = jnp.asarray(rules.r_min_m, x.dtype)[i, j] ** 3
            hi3 = jnp.asarray(rules.r_max_m, x.dtype)[i, j] ** 3
            r = jax.random.uniform(kr, (), x.dtype, lo3, hi3) ** (1.0 / 3.0)
            near = x[j] + r * _direction(kd, x.dtype)
            p = box if not settings.contiguous else jnp.where(k == 0, box, near)
            good = _inside(conf, p) & _position_ok(rules, i, p, x, placed)
            if no_template:  # AGOX accepts the first atom of an empty structure anywhere inside
                good = good | ((k == 0) & _inside(conf, p))
            return n + 1, good, p

        n, found, p = jax.lax.while_loop(
            lambda s: (s[0] < settings.attempts) & ~s[1],
            attempt,
            (jnp.asarray(0), jnp.asarray(False), jnp.zeros(3, x.dtype)),
        )
        x = x.at[i].set(jnp.where(found, p, x[i]))
        return x, placed.at[i].set(found), ok & found, order, key

    def one_draw(key, dtype):
        k_order, k_place = jax.random.split(key)
        order = jax.random.permutation(k_order, m)
        x0 = jnp.zeros((m, 3), dtype)
        init = (x0, jnp.zeros(m, bool), jnp.asarray(True), order, k_place)
        x, _, ok, _, _ = jax.lax.fori_loop(0, m, place_atom, init)
        return x, ok

    def generate(key):
        dtype = jnp.result_type(float)

        def body(state):
            n, _, _ = state
            x, ok = one_draw(jax.random.fold_in(key, n), dtype)
            return n + 1, x, ok

        _, x, ok = jax.lax.while_loop(
            lambda s: (s[0] < max_redraws) & ~s[2],
            body,
            (jnp.asarray(0), jnp.zeros((m, 3), dtype), jnp.asarray(False)),
        )
        return x, ok

    return generate


def make_rattle(
    system: System, settings: AgoxSettings = DEFAULT_SETTINGS
) -> Callable[[jax.Array, jnp.ndarray], jnp.ndarray]:
    """(key, mobile positions [M, 3]) -> rattled positions: AGOX's RattleGenerator."""
    conf = agox_confinement(system)
    rules = _rules(system, settings.c1, settings.c2)
    m = system.n_mobile
    probability = settings.n_rattle / m

    def rattle(key, x):
        k_pick, k_one, k_order, k_move = jax.random.split(key, 4)
        picked = jax.random.uniform(k_pick, (m,), x.dtype) < probability
        one = jnp.arange(m) == jax.random.randint(k_one, (), 0, m)
        picked = jnp.where(jnp.any(picked), picked, one)
        order = jax.random.permutation(k_order, m)

        def move_atom(k, x):
            i = order[k]
            key_atom = jax.random.fold_in(k_move, k)
            others = jnp.arange(m) != i

            def attempt(state):
                n, _, _ = state
                kr, kd = jax.random.split(jax.random.fold_in(key_atom, n))
                radius = settings.rattle_amplitude * jax.random.uniform(kr, (), x.dtype) ** (1 / 3)
                p = x[i] + radius * _direction(kd, x.dtype)
                good = _inside(conf, p) & _position_ok(rules, i, p, x, others)
                return n + 1, good, p

            _, found, p = jax.lax.while_loop(
                lambda s: (s[0] < settings.attempts) & ~s[1],
                attempt,
                (jnp.asarray(0), ~picked[i], x[i]),  # an atom not picked takes no try
            )
            return x.at[i].set(jnp.where(found, p, x[i]))

        return jax.lax.fori_loop(0, m, move_atom, x)

    return rattle


def make_box_constraint(system: System) -> Constraint:
    """AGOX's BoxConstraint on the mobile atoms (module doc), for `godiff_jax.bfgs`."""
    conf = agox_confinement(system)
    hard = ~np.asarray(conf.pbc, bool)  # the box's non-periodic axes

    def adjust_positions(old, new):
        outside = ~_inside(conf, new)
        keep = outside[:, None] & jnp.asarray(hard)[None, :]
        return jnp.where(keep, old, new)

    def adjust_forces(x, f):
        frac = _fractional(conf, x)
        coeff = jnp.where(jnp.asarray(conf.pbc)[None, :], 0.5, frac)
        hi, lo = jnp.max(coeff, axis=-1), jnp.min(coeff, axis=-1)
        scale = jnp.where(
            hi > 0.95,
            _UPPER[0] * hi + _UPPER[1],
            jnp.where(lo < 0.05, _LOWER[0] * lo + _LOWER[1], 1.0),
        )
        factor = jnp.where(jnp.asarray(hard)[None, :], scale[:, None], 1.0)
        return f * factor.astype(f.dtype)

    return Constraint(adjust_positions, adjust_forces)


# --------------------------------------------------------------------------------------
# The search machine: one evaluation per seed per tick
# --------------------------------------------------------------------------------------


class SearchState(NamedTuple):
    key: jax.Array
    relax: BfgsState  # the relaxation under way
    done: jnp.ndarray  # [] bool: it converged or hit the step cap; the next tick starts anew
    started: jnp.ndarray  # [] bool: some structure has been evaluated
    low_energy: jnp.ndarray  # [] eV, lowest single point of the current relaxation
    low_x: jnp.ndarray  # [M, 3] Å, where
    current_energy: jnp.ndarray  # [] eV, basin hopping's current (accepted) structure
    current_x: jnp.ndarray  # [M, 3] Å
    has_current: jnp.ndarray  # [] bool
    n_accepted: jnp.ndarray  # [] int, Metropolis acceptances


class Tick(NamedTuple):
    """What one tick evaluated, per seed."""

    energy: jnp.ndarray  # [S] eV
    positions: jnp.ndarray  # [S, M, 3] Å
    frame: jnp.ndarray  # [S] int, BFGS steps taken in its relaxation (0: a new structure)
    current_energy: jnp.ndarray  # [S] eV, basin hopping's current structure (0 before one)


class Trace(NamedTuple):
    """Every evaluated structure of every seed, in evaluation order (host arrays)."""

    energy: np.ndarray  # [S, N] eV
    positions: np.ndarray  # [S, N, M, 3] Å
    frame: np.ndarray  # [S, N] int
    current_energy: np.ndarray  # [S, N] eV, basin hopping's current structure at each tick
    seconds: np.ndarray  # [N] s, program clock (compilation included) once tick n was done
    n_accepted: np.ndarray  # [S] int, basin hopping's acceptances (0 for RSS)


def _select(mask, a, b):
    """Per-seed choice between two pytrees with a leading seed axis."""

    def pick(u, v):
        return jnp.where(mask.reshape(mask.shape + (1,) * (u.ndim - 1)), u, v)

    return jax.tree.map(pick, a, b)


def make_search(
    system: System,
    energy_fn: EnergyFn,
    settings: AgoxSettings = DEFAULT_SETTINGS,
    method: str = "rss",
    generate: Callable[[jax.Array], tuple[jnp.ndarray, jnp.ndarray]] | None = None,
    rattle: Callable[[jax.Array, jnp.ndarray], jnp.ndarray] | None = None,
):
    """(init(key) -> SearchState, tick(states [S]) -> (states, Tick)) for `method` "rss"
    (a new random structure after every relaxation) or "basin_hopping" (Metropolis, then a
    rattle of the current structure). `generate` / `rattle` replace AGOX's generators
    (tests plant structures this way)."""
    if method not in ("rss", "basin_hopping"):
        raise ValueError(f"method must be 'rss' or 'basin_hopping', got {method!r}")
    generate = generate or make_random_generator(system, settings)
    rattle = rattle or make_rattle(system, settings)
    constraint = make_box_constraint(system) if settings.box_constraint else None
    bfgs = Bfgs(settings.maxstep, settings.alpha)
    energy_forces = energy_forces_fn(energy_fn)
    m = system.n_mobile
    hopping = method == "basin_hopping"

    def evaluate(x):
        e, f = energy_forces(x)
        return e, (constraint.adjust_forces(x, f) if constraint is not None else f)

    def init(key) -> SearchState:
        dtype = jnp.result_type(float)
        x = jnp.zeros((m, 3), dtype)
        zero = jnp.zeros((), dtype)
        return SearchState(
            key=key,
            relax=bfgs_start(x, zero, jnp.zeros_like(x), bfgs),
            done=jnp.asarray(True),
            started=jnp.asarray(False),
            low_energy=zero,
            low_x=x,
            current_energy=zero,
            current_x=x,
            has_current=jnp.asarray(False),
            n_accepted=jnp.asarray(0, jnp.int32),
        )

    def tick(s: SearchState) -> tuple[SearchState, Tick]:
        keys = jax.vmap(lambda k: jax.random.split(k, 3))(s.key)
        k_next, k_new, k_accept = keys[:, 0], keys[:, 1], keys[:, 2]
        need = s.done
        if hopping:
            finished = need & s.started
            u = jax.vmap(lambda k: jax.random.uniform(k, (), s.low_energy.dtype))(k_accept)
            de = s.low_energy - s.current_energy
            # AGOX: lower always, else exp(-dE/kT) > u; the first relaxation always
            accept = finished & (
                ~s.has_current | (de < 0) | (u < jnp.exp(-de / settings.temperature))
            )
            s = s._replace(
                current_energy=jnp.where(accept, s.low_energy, s.current_energy),
                current_x=_select(accept, s.low_x, s.current_x),
                has_current=s.has_current | accept,
                n_accepted=s.n_accepted + accept.astype(jnp.int32),
            )
        zeros = jnp.zeros_like(s.relax.x)
        use_random = need & ~s.has_current if hopping else need
        x_random = jax.lax.cond(
            jnp.any(use_random), lambda: jax.vmap(generate)(k_new)[0], lambda: zeros
        )
        x_new = x_random
        if hopping:
            use_rattle = need & s.has_current
            x_rattled = jax.lax.cond(
                jnp.any(use_rattle),
                lambda: jax.vmap(rattle)(k_new, s.current_x),
                lambda: zeros,
            )
            x_new = _select(s.has_current, x_rattled, x_random)
        x_step = jax.vmap(lambda r: bfgs_propose(r, bfgs, constraint))(s.relax)
        x = _select(need, x_new, x_step)
        e, f = jax.vmap(evaluate)(x)
        relax = _select(
            need,
            jax.vmap(lambda x, e, f: bfgs_start(x, e, f, bfgs))(x, e, f),
            jax.vmap(bfgs_update)(s.relax, x, e, f),
        )
        done = (jax.vmap(_max_force)(f) < settings.fmax) | (relax.step >= settings.max_steps)
        lower = need | (e < s.low_energy)
        s = s._replace(
            key=k_next,
            relax=relax,
            done=done,
            started=jnp.ones_like(s.started),
            low_energy=jnp.where(lower, e, s.low_energy),
            low_x=_select(lower, x, s.low_x),
        )
        return s, Tick(energy=e, positions=x, frame=relax.step, current_energy=s.current_energy)

    return init, tick


def run_search(
    init,
    tick,
    seeds: list[int],
    n_evaluations: int,
    chunk: int = 500,
    progress: Callable[[int, float], None] | None = None,
) -> Trace:
    """Run the machine for `n_evaluations` ticks, all seeds as one program (vmapped), in
    jitted scans of `chunk` ticks; `progress(evaluations, seconds)` after each chunk."""
    t0 = time.perf_counter()
    states = jax.vmap(init)(jnp.stack([jax.random.PRNGKey(s) for s in seeds]))

    @jax.jit
    def scan(states, length_marker):
        return jax.lax.scan(lambda c, _: tick(c), states, None, length=length_marker.shape[0])

    energies, positions, frames, currents, seconds = [], [], [], [], []
    done = 0
    while done < n_evaluations:
        n = min(chunk, n_evaluations - done)
        states, out = scan(states, jnp.zeros(n))
        out = jax.tree.map(np.asarray, out)  # waits for the chunk
        t = time.perf_counter() - t0
        # Within a chunk the clock is spread evenly over its ticks.
        t_prev = seconds[-1][-1] if seconds else 0.0
        seconds.append(t_prev + (t - t_prev) * np.arange(1, n + 1) / n)
        energies.append(out.energy.T)
        positions.append(np.moveaxis(out.positions, 0, 1))
        frames.append(out.frame.T)
        currents.append(out.current_energy.T)
        done += n
        if progress is not None:
            progress(done, t)
    return Trace(
        energy=np.concatenate(energies, axis=1),
        positions=np.concatenate(positions, axis=1),
        frame=np.concatenate(frames, axis=1),
        current_energy=np.concatenate(currents, axis=1),
        seconds=np.concatenate(seconds),
        n_accepted=np.asarray(states.n_accepted),
    )


# --------------------------------------------------------------------------------------
# Scoring: the success tests on every evaluated structure
# --------------------------------------------------------------------------------------


def relaxation_stats(frame: np.ndarray, max_steps: int) -> dict:
    """Per seed, from the frame numbers [N] of its evaluations: relaxations started, those
    that hit the step cap, and mean BFGS steps of the finished ones."""
    starts = np.flatnonzero(frame == 0)
    ends = np.append(starts[1:] - 1, len(frame) - 1)
    steps = frame[ends]
    finished = steps[:-1] if len(steps) else steps  # the last may be cut off by the budget
    return {
        "n_relaxations": int(len(starts)),
        "n_capped": int(np.sum(frame == max_steps)),
        "mean_relax_steps": float(np.mean(finished)) if len(finished) else None,
        "relaxation_ends": ends,
    }


def score(
    trace: Trace,
    seeds: list[int],
    tests: SuccessTests,
    e_min: float,
    max_steps: int,
    grid_step: int = 16,
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Per-seed rows in the quality harness's schema (benchmarks/results/README.md), the
    evaluation grid and the per-seed best-above-minimum curves.

    `tests(positions [N, M, 3], energies [N])` runs on every evaluated structure of a seed,
    relaxation steps included; evaluation k (1-based) is the k-th single point."""
    n = trace.energy.shape[1]
    evaluation = np.arange(1, n + 1)
    grid = np.arange(grid_step, n + 1, grid_step)
    rows, curves = [], []
    for i, seed in enumerate(seeds):
        e = trace.energy[i]
        finite = np.isfinite(e)
        ok = tests(trace.positions[i], e)
        stats = relaxation_stats(trace.frame[i], max_steps)
        ends = stats.pop("relaxation_ends")
        row: dict = {"seed": int(seed), "evaluations": int(n), "iterations": stats["n_relaxations"]}
        for name in ("strict", "graph"):
            hit = None if ok.get(name) is None else np.flatnonzero(np.asarray(ok[name]) & finite)
            if hit is None or not hit.size:
                row[f"first_success_{name}"] = row[f"seconds_to_success_{name}"] = None
            else:
                row[f"first_success_{name}"] = int(evaluation[hit[0]])
                row[f"seconds_to_success_{name}"] = float(trace.seconds[hit[0]])
        row["first_success_online"] = row["first_success_strict"]
        best = np.minimum.accumulate(np.where(finite, e, np.inf))
        row["best_energy_above_min"] = float(best[-1] - e_min) if finite.any() else None
        row["best_energy_by_iteration"] = [float(best[k] - e_min) for k in ends]
        row["n_skipped_steps"] = 0  # no training: the GO-Diff health fields are empty
        row["loss_all_finite"] = True
        row["nonfinite_params_from_iteration"] = None
        bad = np.flatnonzero(~finite)
        row["nonfinite_samples_from_iteration"] = (
            int(np.searchsorted(np.flatnonzero(trace.frame[i] == 0), bad[0], side="right"))
            if bad.size
            else None
        )
        row["clipped_fraction_mean"] = None
        row.update(stats)
        row["n_accepted"] = int(trace.n_accepted[i])
        rows.append(row)
        curves.append(best_curve(evaluation[finite], e[finite], grid, e_min))
    return rows, grid, np.asarray(curves)
