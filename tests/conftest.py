"""Numerical parity tests need float64; library code is explicit about float32 where it
wants it (the score model), so enabling x64 for the whole session is safe."""

import jax

from godiff_jax.search import SearchConfig

jax.config.update("jax_enable_x64", True)

# The whole loop in seconds: two iterations of 6 samples, a 1-block model of 8 features.
TINY = SearchConfig(
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
