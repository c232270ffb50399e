"""Seeds and samples spread over 2 virtual CPU devices (`godiff_jax.sharding`)."""

import os
import subprocess
import sys
from pathlib import Path

import jax

from godiff_jax import sharding


def test_one_device_changes_nothing():
    assert sharding.plan(8, 128, jax.devices()[:1]) == sharding.NO_LAYOUT


def test_sharded_sampling_equals_unsharded_for_the_same_keys():
    # Its own process: the virtual device count is fixed when JAX starts. Prints one
    # line per comparison and exits non-zero on any difference beyond its stated bound.
    here = Path(__file__).parent
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])
    )
    out = subprocess.run(
        [sys.executable, str(here / "sharding_check.py")],
        capture_output=True,
        text=True,
        cwd=here,
        env=env,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    # Seeds over the devices: bitwise each seed's own batch (a device runs one seed).
    assert "vs each seed alone: largest difference 0" in out.stdout
    assert "one seed's batch over 2 devices: largest difference 0" in out.stdout
    assert "the runner's placed state: largest difference 0" in out.stdout
    assert len(lines) == 3, lines
