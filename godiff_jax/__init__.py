"""GO-Diff in JAX: data-free diffusion for global atomic structure optimisation.

The pure pieces (prior and reverse sampling, loss, Boltzmann weights, archive/buffer, one
search iteration) are exported here for use from JAX research code; `run` drives whole
searches with checkpoints and outputs.

Architecture (one job per module; the README's "Layout" lists them):

- Geometry lives in one place, `geometry`: lattice images, minimum image, distances,
  wrapping and confinement, used by the energy models, the score model's host tables, the
  distance filter, the success tests and `System`.
- The score model (`model/`) is split by job: Flax layers, message kernels with their
  hand-written gradient, and host-side neighbour tables; `ScoreModel` ties them to a
  System, `ScoreContext` is the template-only pass.
- `search` is one iteration as pure functions of a `RunState`; `runner.run` is the thin
  host loop around it: sample (jitted, seeds vmapped) -> evaluate (`evaluate`: a JAX
  evaluator inside jit or an ASE one on any Executor) -> update (jitted) -> `records`
  (the one validity mask of the batch decides the archive, the database, the metrics and
  the success test) -> checkpoint. The wall clock is the host's (`records.RunClock`).
- Host evaluators share one protocol and its bookkeeping (`evaluate.evaluate_host`): an
  ASE calculator on an Executor (`AseEvaluator`) or on a Dask cluster
  (`dask_evaluator.DaskEvaluator`: tasks, retries, time limits; dask is an optional
  extra, imported only there). All seeds' structures of an iteration go out as one batch.
- Devices: `sharding` lays the seed axis (or one seed's sample axis) over the local
  devices; the jitted phases are unchanged, GSPMD partitions them.
- Success tests: `analysis` holds EMT's (its minimum); `model_success` finds any other
  model's own minimum by relaxing the reference structures with it.
- Iterative pieces are (init, step) pairs in the optax / jax-md way: FIRE
  (`relax.fire_init`/`fire_step`), the sampler's `Corrector`, the kT controller
  (`schedule.Temperature`).
- Settings (`config`) are nested by concern (sampler, buffer, training, model) with one key
  namespace of dotted names and flat aliases, for `--set`, config.json and the command line.

What jax-md and chex do here, and where our own code stays: jax-md's `space.free` gives
the free-space displacements (cluster systems) and its `space.periodic_general` is what
the tests hold our minimum image to. Our slabs are periodic in x/y only, which jax-md's
spaces do not express, and the adatom's cell is narrower than twice the cutoffs, so pair
sums need explicit image enumeration (`geometry.PeriodicImages`); our EMT and LJ keep
their own pair sums for that reason, and FIRE is ours because it must match ASE's variant
step for step (jax-md's `fire_descent` is the MD-integrator form). chex checks shapes at
the model's entry (`chex.assert_shape`) and compares pytrees in the tests.
"""

from godiff_jax.ase_interop import (
    EMTCalculator,
    JaxCalculator,
    from_atoms,
    to_atoms,
)
from godiff_jax.buffer import (
    Archive,
    Buffer,
    add_to_archive,
    init_archive,
    select_buffer,
    weighted_sample_without_replacement,
)
from godiff_jax.checkpoint import __version__ as __version__  # the installed distribution
from godiff_jax.config import DEFAULT_SETTINGS, PAPER_SETTINGS, SearchConfig, make_config
from godiff_jax.evaluate import AseEvaluator, Evaluation, JaxEvaluator, evaluate_with_calculator
from godiff_jax.loss import boltzmann_weights, dsm_error, weighted_dsm_loss
from godiff_jax.runner import run
from godiff_jax.sampler import reverse_sample, reverse_times
from godiff_jax.schedule import exponential_kT
from godiff_jax.sde import VESDE, diffusion_sq, marginal_var, perturb, sample_prior
from godiff_jax.search import GODiff, IterationInfo, RunState
from godiff_jax.system import (
    System,
    load_template,
    make_cluster_system,
    make_surface_system,
    pt111_heptamer,
    stepped_pt_adatom,
)
from godiff_jax.train import TrainState, init_train_state, make_optimizer, train_steps

__all__ = [
    "DEFAULT_SETTINGS",
    "PAPER_SETTINGS",
    "AseEvaluator",
    "EMTCalculator",
    "Evaluation",
    "GODiff",
    "IterationInfo",
    "JaxCalculator",
    "JaxEvaluator",
    "RunState",
    "SearchConfig",
    "evaluate_with_calculator",
    "from_atoms",
    "run",
    "to_atoms",
    "Archive",
    "Buffer",
    "System",
    "TrainState",
    "VESDE",
    "add_to_archive",
    "boltzmann_weights",
    "diffusion_sq",
    "dsm_error",
    "exponential_kT",
    "init_archive",
    "init_train_state",
    "make_config",
    "load_template",
    "make_cluster_system",
    "make_optimizer",
    "make_surface_system",
    "marginal_var",
    "perturb",
    "pt111_heptamer",
    "reverse_sample",
    "reverse_times",
    "sample_prior",
    "select_buffer",
    "stepped_pt_adatom",
    "train_steps",
    "weighted_dsm_loss",
    "weighted_sample_without_replacement",
]
