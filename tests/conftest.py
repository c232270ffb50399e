"""Numerical parity tests need float64; library code is explicit about float32 where it
wants it (the score model), so enabling x64 for the whole session is safe."""

import os
import tempfile

import jax

from godiff_jax.config import make_config
from godiff_jax.evaluate import JaxEvaluator
from godiff_jax.potentials.emt import emt_energy_fn
from godiff_jax.runner import run
from godiff_jax.runtime import use_compilation_cache

jax.config.update("jax_enable_x64", True)

# Many tests compile the same tiny programs (the same config and system, other Python
# objects): a compilation cache for this session (its pytest-xdist workers and the
# `godiff` subprocesses it starts) compiles each once. New for every session, so nothing
# leaks in from outside it.
_run = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # shared by the workers of one session
if _run:
    _cache = os.path.join(tempfile.gettempdir(), f"godiff-jax-test-cache-{_run}")
    os.makedirs(_cache, exist_ok=True)
else:
    _cache = tempfile.mkdtemp(prefix="godiff-jax-test-cache-")
os.environ["GODIFF_JAX_CACHE"] = _cache
use_compilation_cache()
# One CPU device in this process and the `godiff` subprocesses the tests start, whatever
# GODIFF_JAX_CPU_DEVICES the caller's shell sets (runtime.split_cpu): tests compare their
# numbers with runs made here; tests/test_sharding.py checks the split in its own processes.
os.environ["GODIFF_JAX_CPU_DEVICES"] = "1"

# The whole loop in seconds: two iterations of 6 samples, a 1-block model of 8 features.
TINY = make_config(
    n_iterations=2,
    n_samples=6,
    buffer_size=6,
    batch_size=3,
    train_steps=4,
    kT_start=1.0,
    kT_end=0.1,
    n_reverse_steps=4,
    features=8,
    n_blocks=1,
    n_rbf=6,
    cutoff=5.0,
)
# ESS-driven sampling and the ESS-sized buffer on TINY's scale: chunks of 2 of at most 8
# samples, 4 in the first iteration, the run ending after 20 evaluations.
TINY_ESS = dict(
    n_samples=8,
    ess_target=3.0,
    ess_chunk=2,
    ess_first=4,
    max_evaluations=20,
    n_iterations=10,
    ess_buffer=True,
    ess_buffer_min=2,
    ess_buffer_max=8,
)


def run_emt(system, config, workdir, **kwargs):
    """`runner.run` with the JAX EMT unless another evaluator is given."""
    kwargs.setdefault("evaluator", JaxEvaluator(emt_energy_fn(system)))
    return run(system, config, workdir, **kwargs)
