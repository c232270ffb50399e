"""Process-level tuning for XLA on CPU, and the machine line benchmarks print."""

from __future__ import annotations

import ctypes
import os
import re
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
        f" x{len(jax.devices())}"
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


CPU_DEVICES_ENV = "GODIFF_JAX_CPU_DEVICES"  # a number, or "auto" (cpu_device_count)


def cpu_device_count(n_seeds: int, cores: int | None = None) -> int:
    """CPU devices for `n_seeds` seeds ("auto"): the largest divisor of the seed count not
    above the cores, so that each device runs whole seeds."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = max(1, int(cores or 1))
    return max(d for d in range(1, min(n_seeds, cores) + 1) if n_seeds % d == 0)


def split_cpu(n_seeds: int, devices: int | str | None = None, seed_batch: int | None = None) -> int:
    """Split the host CPU into several JAX devices so that the seeds of one program run as
    parallel streams (`sharding.plan` then puts whole seeds on each device).

    One CPU device runs a program's operations in turn and spreads only the large ones over
    the cores; split, each device runs its seeds at the same time. Measured on 2 cores
    (benchmarks/RESULTS.md sections 70, 73): the 8-seed training step 1.2-1.3x faster, a
    whole heptamer iteration 1.04-1.10x. `devices`: a number, "auto" (`cpu_device_count`),
    or None for $GODIFF_JAX_CPU_DEVICES, else "auto". Each seed's numbers are those of that
    seed run alone; against the seeds batched on one device they differ by float32 rounding
    (tests/test_sharding.py), so a trajectory is not bitwise that of a one-device run. Only
    the CPU platform is split (a GPU run keeps its GPUs). Call before JAX's first
    computation; returns the CPU device count in force (unchanged where JAX has started or
    XLA_FLAGS forces a count). With `seed_batch` below the seed count the runner loops over
    groups on one device (`runner.run`), so nothing is split.
    """
    import jax

    forced = re.search(
        r"xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", "")
    )
    current = jax.config.jax_num_cpu_devices
    if current not in (-1, None):  # set by the caller
        return int(current)
    if forced:
        return int(forced.group(1))
    if seed_batch is not None and seed_batch < n_seeds:
        return 1
    if devices is None:
        devices = os.environ.get(CPU_DEVICES_ENV) or "auto"
    if str(devices).strip().lower() == "auto":
        devices = cpu_device_count(n_seeds)
    try:
        devices = int(devices)
    except ValueError:
        raise ValueError(f"CPU devices: a number or 'auto', got {devices!r}") from None
    if devices <= 1:
        return 1
    try:
        jax.config.update("jax_num_cpu_devices", devices)
    except RuntimeError:  # the backend is up: JAX keeps the devices it started with
        return len(jax.devices("cpu"))
    return devices
