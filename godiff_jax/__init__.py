"""GO-Diff in JAX: data-free diffusion for global atomic structure optimisation.

The pure pieces (prior and reverse sampling, loss, Boltzmann weights, archive/buffer, one
search iteration) are exported here for use from JAX research code; `run` drives whole
searches with checkpoints and outputs.
"""

from godiff_jax.ase_interop import (
    EMTCalculator,
    JaxCalculator,
    evaluate_with_calculator,
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
from godiff_jax.config import SearchConfig, make_config
from godiff_jax.evaluate import AseEvaluator, Evaluation, JaxEvaluator
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
