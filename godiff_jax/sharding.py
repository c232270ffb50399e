"""Seeds or samples spread over the local devices with `jax.sharding`.

The multi-seed program is one jitted function of a state with a leading seed axis. With
several devices (GPUs, or CPU devices from `--xla_force_host_platform_device_count`) that
axis is split over them when the seed count divides evenly ("seeds": each device runs whole
seeds, nothing crosses devices but the host's reads); otherwise the sample batch of each
seed is split ("samples": each device runs the reverse SDE of its share of the samples, and
the training phase runs on the gathered batch). One device changes nothing. The random
draws do not depend on the layout (JAX's partitionable threefry), so a sharded run gives
the same numbers as one on a single device (tests/test_sharding.py).

Several hosts: start each with `jax.distributed.initialize()`; `jax.devices()` then lists
every host's devices and the same layout applies (not tested here).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class Layout(NamedTuple):
    mode: str  # "none" | "seeds" | "samples"
    mesh: Mesh | None

    @property
    def n_devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.size

    def seed_axis(self) -> NamedSharding | None:
        """The sharding of an array whose leading axis is the seed axis."""
        return NamedSharding(self.mesh, PartitionSpec("d")) if self.mode == "seeds" else None

    def sample_axis(self) -> NamedSharding | None:
        """The sharding of one seed's sample batch [N, ...] inside the sample phase."""
        return NamedSharding(self.mesh, PartitionSpec("d")) if self.mode == "samples" else None


NO_LAYOUT = Layout("none", None)


def plan(n_seeds: int, n_samples: int, devices=None) -> Layout:
    """Seeds over the devices if they divide evenly, else samples if those do, else none."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < 2:
        return NO_LAYOUT
    mesh = Mesh(np.array(devices), ("d",))
    if n_seeds % len(devices) == 0:
        return Layout("seeds", mesh)
    if n_samples % len(devices) == 0:
        return Layout("samples", mesh)
    return NO_LAYOUT


def place(tree, layout: Layout):
    """Put a pytree with a leading seed axis on the devices (seed mode), else as it is."""
    sharding = layout.seed_axis()
    if sharding is None:
        return tree
    return jax.device_put(tree, sharding)
