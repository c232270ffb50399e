"""Numerical parity tests need float64; library code is explicit about float32 where it
wants it (the score model), so enabling x64 for the whole session is safe."""

import jax

jax.config.update("jax_enable_x64", True)
