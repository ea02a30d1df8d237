"""Reference-calculator factories used by end-to-end tests (imported by DFT worker processes
through ``reference.calculator = "helpers:..."`` with the tests folder on PYTHONPATH)."""

from __future__ import annotations

import time

from ase.calculators.emt import EMT


class SlowEMT(EMT):
    """EMT that takes ``delay_s`` longer per call: long enough to kill a worker mid-task."""

    def __init__(self, delay_s: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay_s = delay_s

    def calculate(self, *args, **kwargs) -> None:
        time.sleep(self.delay_s)
        super().calculate(*args, **kwargs)


def slow_emt(delay_s: float = 0.5) -> SlowEMT:
    return SlowEMT(delay_s=delay_s)
