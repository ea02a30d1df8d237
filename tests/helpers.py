"""Reference-calculator factories used by end-to-end tests (imported by DFT worker processes
through ``reference.calculator = "helpers:..."`` with the tests folder on PYTHONPATH)."""

from __future__ import annotations

import time

from ase.calculators.emt import EMT


class StallingEMT(EMT):
    """EMT whose first call hangs for ``stall_s`` in a process started with SLHMC_TEST_STALL=1:
    a DFT job that runs past its time limit on one worker and not on the others."""

    def __init__(self, stall_s: float = 60.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stall_s = stall_s
        self.calls = 0

    def calculate(self, *args, **kwargs) -> None:
        import os

        self.calls += 1
        if self.calls == 1 and os.environ.get("SLHMC_TEST_STALL") == "1":
            time.sleep(self.stall_s)
        super().calculate(*args, **kwargs)


def stalling_emt(stall_s: float = 60.0) -> StallingEMT:
    return StallingEMT(stall_s=stall_s)


class BreaksAfter(EMT):
    """EMT that returns a NaN energy from call ``after`` on: an SCF that blows up for good."""

    def __init__(self, after: int = 5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.after = after
        self.calls = 0

    def calculate(self, *args, **kwargs) -> None:
        super().calculate(*args, **kwargs)
        self.calls += 1
        if self.calls > self.after:
            self.results["energy"] = float("nan")
            self.results["free_energy"] = float("nan")


def breaks_after(after: int = 5) -> BreaksAfter:
    return BreaksAfter(after=after)
