"""ASE calculators for the command-line tests (imported by `godiff run` subprocesses)."""

import os
import signal
from pathlib import Path

from ase.calculators.emt import EMT


class CountedEMT(EMT):
    """ASE's EMT that appends a line to `log` per call, and SIGKILLs its own process at
    call number `kill_at` (once: the `log` file's length says how far it got)."""

    def __init__(self, log, kill_at=0, **kwargs):
        super().__init__(**kwargs)
        self.log = Path(log)
        self.kill_at = int(kill_at)

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        super().calculate(atoms, properties, system_changes or [])
        with open(self.log, "a") as f:
            f.write(f"{self.results['energy']!r}\n")
        n = len(self.log.read_text().splitlines())
        if n == self.kill_at and not Path(f"{self.log}.killed").exists():
            Path(f"{self.log}.killed").touch()
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: as a crash
