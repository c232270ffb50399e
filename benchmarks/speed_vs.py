"""benchmarks/speed.py of two source trees in turn (A B A B ...), and their ratios.

    git worktree add /tmp/old OLD_COMMIT
    python benchmarks/speed_vs.py /tmp/old . --rounds 3 -- --steps 50 --train-steps 100 --repeats 3

Each round runs each tree's own speed.py in a fresh process (PYTHONPATH set to that tree)
and reads its "ms per structure-step" (reverse diffusion) and "ms per step" (training)
lines. Prints every round and the median of the per-round ratios new/old, so that a drift
of the machine's speed affects both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

FIGURES = {
    "reverse step (ms per structure)": re.compile(
        r"reverse diffusion: ([\d.]+) ms per structure-step"
    ),
    "training step (ms)": re.compile(r"training: ([\d.]+) ms per step"),
}


def measure(tree: Path, args: list[str]) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(
        [sys.executable, str(tree / "benchmarks" / "speed.py"), *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {name: float(rx.search(out).group(1)) for name, rx in FIGURES.items()}


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    ratios: dict[str, list[float]] = {name: [] for name in FIGURES}
    for r in range(args.rounds):
        old = measure(args.old.resolve(), extra)
        new = measure(args.new.resolve(), extra)
        for name in FIGURES:
            ratios[name].append(new[name] / old[name])
            print(f"round {r}: {name}: old {old[name]:.3f}, new {new[name]:.3f}")
    for name, values in ratios.items():
        print(
            f"{name}: new/old median {statistics.median(values):.3f} "
            f"(min {min(values):.3f}, max {max(values):.3f}, {len(values)} rounds)"
        )


if __name__ == "__main__":
    main()
