"""Run by tests/test_sharding.py in a process with 2 virtual CPU devices: sampling and a
whole iteration spread over the devices against the same on one device."""

import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from conftest import TINY, run_emt  # noqa: E402

from godiff_jax import sharding, stepped_pt_adatom  # noqa: E402
from godiff_jax.search import GODiff  # noqa: E402


def same(a, b, what, atol=0.0):
    """Every leaf equal (bitwise with atol 0); prints the largest difference."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype.kind == "f":
            d = np.abs(x.astype(float) - y.astype(float))
            d = np.where(np.isnan(x) & np.isnan(y), 0.0, d)
            worst = max(worst, float(np.max(d, initial=0.0)))
        elif not np.array_equal(x, y):
            sys.exit(f"{what}: integer or boolean leaves differ")
    print(f"{what}: largest difference {worst:.3g}")
    if worst > atol:
        sys.exit(f"{what}: differ by {worst:.3g} > {atol}")


assert len(jax.devices()) == 2, jax.devices()
system = stepped_pt_adatom()
search = GODiff(system, TINY)
keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in (0, 1)])
states = jax.jit(jax.vmap(search.init_state))(keys)

# Seeds over the devices: each device samples one seed.
layout = sharding.plan(2, TINY.n_samples)
assert layout.mode == "seeds"
sample = jax.jit(jax.vmap(search.sample))
placed = sharding.place(states, layout)
x_sharded = sample(placed)
assert len(x_sharded[0].sharding.device_set) == 2
# A device runs one seed: bitwise that seed sampled alone. (Against both seeds batched on
# one device the numbers differ by float32 rounding of the other batch shape, ~1e-6 Å.)
alone = [sample(jax.tree.map(lambda v, s=s: v[s : s + 1], states)) for s in (0, 1)]
same(
    jax.tree.map(lambda *v: np.concatenate(v), *alone),
    x_sharded,
    "seeds over 2 devices vs each seed alone",
)

# One seed, its samples over the devices.
layout = sharding.plan(1, TINY.n_samples)
assert layout.mode == "samples"
one = jax.tree.map(lambda v: v[0], states)
split = GODiff(system, TINY, sample_sharding=layout.sample_axis())
x_split = jax.jit(split.sample)(one)
assert len(x_split[0].sharding.device_set) == 2
same(jax.jit(search.sample)(one), x_split, "samples, one seed's batch over 2 devices")

# The runner lays the seeds out itself: it asks for the seed layout and places its state
# on both devices (no iteration run: the phases it compiles are the ones checked above).
from godiff_jax import runner  # noqa: E402

seen, phases = [], []
compiled = runner.compiled_phases
runner.compiled_phases = lambda *args: (
    seen.append(args[5]) or phases.append(compiled(*args)) or phases[-1]
)
with tempfile.TemporaryDirectory() as tmp:
    state = run_emt(system, TINY, tmp, seeds=[0, 1], progress=False, max_iterations=0)
assert [layout.mode for layout in seen] == ["seeds"], seen
assert len(state.archive.positions.sharding.device_set) == 2
same(state.key, states.key, "the runner's placed state")

# Three iterations compile each phase once: the state keeps its layout between them (the
# host's first successes used to come back on one device and cost a second compilation).
with tempfile.TemporaryDirectory() as tmp:
    state = run_emt(system, TINY.replace(n_iterations=3), tmp, seeds=[0, 1], progress=False)
_, sample_fn, eval_fn, _, update_fn = phases[-1]
sizes = [f._cache_size() for f in (sample_fn, eval_fn, update_fn)]
assert sizes == [1, 1, 1], sizes
assert len(state.first_success.sharding.device_set) == 2
