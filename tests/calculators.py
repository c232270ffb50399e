"""ASE calculators for the tests: crashing, failing and hanging ones (imported by
`godiff run` subprocesses and Dask workers)."""

import os
import signal
import time
from pathlib import Path

from ase.calculators.emt import EMT


class CountedEMT(EMT):
    """ASE's EMT that appends a line to `log` per call, and SIGKILLs its own process at
    call number `kill_at` or the first call after it (once: the `log` file's length says how
    far it got). Two workers can append before either reads the length, so the test is
    `>=`, and the `.killed` marker is created exclusively: exactly one process dies."""

    def __init__(self, log, kill_at=0, **kwargs):
        super().__init__(**kwargs)
        self.log = Path(log)
        self.kill_at = int(kill_at)

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        super().calculate(atoms, properties, system_changes or [])
        with open(self.log, "a") as f:
            f.write(f"{self.results['energy']!r}\n")
        n = len(self.log.read_text().splitlines())
        if self.kill_at and n >= self.kill_at:
            try:
                os.close(os.open(f"{self.log}.killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: as a crash


class _CallCounter(EMT):
    """ASE's EMT that appends one line to `log` per call (shared by every process)."""

    def __init__(self, log, **kwargs):
        super().__init__(**kwargs)
        self.log = Path(log)

    def _count(self) -> int:
        with open(self.log, "a") as f:
            f.write("call\n")
        return len(self.log.read_text().splitlines())


class FlakyEMT(_CallCounter):
    """Raises on call number `fail_at` and every later call until `fail_times` calls failed."""

    def __init__(self, log, fail_at=1, fail_times=1, **kwargs):
        super().__init__(log, **kwargs)
        self.fail_at, self.fail_times = int(fail_at), int(fail_times)

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        n = self._count()
        if self.fail_at <= n < self.fail_at + self.fail_times:
            raise RuntimeError(f"SCF did not converge (call {n})")
        super().calculate(atoms, properties, system_changes or [])


class HangingEMT(_CallCounter):
    """Hangs (sleeps `hang_s`) on call number `hang_at`, as a stuck DFT job."""

    def __init__(self, log, hang_at=1, hang_s=3600.0, **kwargs):
        super().__init__(log, **kwargs)
        self.hang_at, self.hang_s = int(hang_at), float(hang_s)

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        if self._count() == self.hang_at:
            time.sleep(self.hang_s)
        super().calculate(atoms, properties, system_changes or [])
