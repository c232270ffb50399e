"""Basin hopping on the heptamer as AGOX runs it, every single point counted.

    python benchmarks/basin_hopping.py --seeds 8 --evaluations 5000 \
        --name cpu_heptamer8_basin_hopping

AGOX's RattleGenerator (each mobile atom picked with probability 3/7, moved up to 3 Å),
local relaxation with ASE's BFGS (in JAX) on the JAX EMT, and AGOX's MetropolisSampler at
the kT of its basin-hopping examples (0.25 eV) on each relaxation's lowest single point;
the first structure is a random one. Counting, success tests, options and the result file
as benchmarks/rss.py (which runs both).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rss import main  # noqa: E402

if __name__ == "__main__":
    main("basin_hopping")
