"""Process-level tuning for XLA on CPU, and the machine line benchmarks print."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

CACHE_ENV = "GODIFF_JAX_CACHE"  # a directory, or "off"


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


def use_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Keep XLA's compiled programs on disk, so a second run of the same search (a resume,
    another seed count aside) skips most of its compilation (the first heptamer iteration
    compiles for about a minute on a 2-core CPU).

    The directory is `path`, else $GODIFF_JAX_CACHE, else ~/.cache/godiff_jax/xla;
    GODIFF_JAX_CACHE=off turns it off. Programs are keyed by their compiled form and the
    jax version, so a stale entry is never used. Returns the directory (None when off).
    """
    import jax

    chosen = path if path is not None else os.environ.get(CACHE_ENV)
    if chosen is not None and str(chosen).lower() == "off":
        return None
    where = Path(chosen) if chosen else Path.home() / ".cache" / "godiff_jax" / "xla"
    where.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return where
