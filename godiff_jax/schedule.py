"""Annealing schedules for kT (eV)."""

from __future__ import annotations

import numpy as np


def exponential_kT(kT_start: float, kT_end: float, n_iterations: int) -> np.ndarray:
    """kT_k = exp(linspace(ln kT_start, ln kT_end, K)): geometric cooling, eV."""
    if n_iterations < 1:
        raise ValueError(f"need at least one iteration, got {n_iterations}")
    if not (kT_start > 0 and kT_end > 0):
        raise ValueError(f"kT must be positive, got {kT_start}, {kT_end}")
    return np.exp(np.linspace(np.log(kT_start), np.log(kT_end), n_iterations))
