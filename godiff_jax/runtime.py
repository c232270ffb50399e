"""Process-level tuning for XLA on CPU, and the machine line benchmarks print."""

from __future__ import annotations

import ctypes


def keep_heap_memory(top_pad_mb: int = 512) -> bool:
    """Ask glibc to keep freed heap memory (M_TOP_PAD) instead of returning it.

    XLA allocates its buffers afresh on every call and glibc hands freed memory back
    to the kernel, so every call page-faults its working set in again; on this VM a
    minor fault costs ~2.5 us, which doubled the training step. Process-wide; a no-op
    off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_top_pad = -2
    return bool(libc.mallopt(m_top_pad, top_pad_mb << 20))


def machine_summary() -> str:
    """One line for benchmark output: date, CPU, core count, jax version and backend."""
    import datetime
    import os
    import platform

    import jax

    return (
        f"{datetime.date.today()}  {platform.processor() or platform.machine()}  "
        f"{os.cpu_count()} CPUs  jax {jax.__version__} {jax.devices()[0].platform}"
    )
