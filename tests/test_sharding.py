"""Seeds and samples spread over 2 virtual CPU devices (`godiff_jax.sharding`)."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

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


def test_cpu_device_count_is_the_largest_divisor_of_the_seeds_within_the_cores():
    from godiff_jax.runtime import cpu_device_count

    cases = {(8, 2): 2, (8, 3): 2, (8, 16): 8, (6, 4): 3, (7, 2): 1, (1, 2): 1, (12, 5): 4}
    for (seeds, cores), want in cases.items():
        assert cpu_device_count(seeds, cores) == want, (seeds, cores)


SPLIT_CHECK = """
import jax
import godiff_jax  # must not start JAX's backend (jax_md computes at import)
from godiff_jax import cli
from godiff_jax.runtime import split_cpu

print("split", split_cpu(8, None))  # auto (asked or by default) on the 2 cores below
print("devices", len(jax.devices()))
print("again", split_cpu(8, 4))  # JAX has started: the devices stay as they are
args = cli.experiment_parser("x", "runs/x").parse_args(["--cpu-devices", "3"])
print("flag", args.cpu_devices)
"""


@pytest.mark.parametrize("asked", ["auto", None])  # None: the default, auto
def test_split_cpu_after_importing_the_package_and_not_after_jax_started(asked):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "GODIFF_JAX_CPU_DEVICES")}
    if asked is not None:
        env["GODIFF_JAX_CPU_DEVICES"] = asked
    code = "import os; os.sched_getaffinity = lambda pid: {0, 1}\n" + SPLIT_CHECK
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["split", "2", "devices", "2", "again", "2", "flag", "3"]


def test_split_cpu_leaves_a_forced_device_count_alone():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=3")
    code = "from godiff_jax.runtime import split_cpu; import jax; print(split_cpu(8), len(jax.devices()))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["3", "3"]


def test_split_cpu_refuses_a_device_count_that_is_not_a_number():
    from godiff_jax.runtime import split_cpu

    with pytest.raises(ValueError, match="a number or 'auto', got 'two'"):
        split_cpu(8, "two")
    # Seeds looped over in groups run on one device: nothing to split, nothing parsed.
    assert split_cpu(8, "two", seed_batch=4) == 1
