"""Pre-fetching: several DFT workers advancing one exact chain (Brockwell 2006).

The chain is sequential, but a trial's trajectory needs only its start positions, not the
outcome of the trial before: proposal t+1 can start from proposal t's end point *assuming* t is
accepted, or from t's start *assuming* it is rejected. The pipeline holds up to k such
proposals, each labelled by its own DFT worker; results are consumed strictly in chain order
with the exact Metropolis test, and at the first outcome that contradicts an assumption the rest
of the pipeline is dropped (its labels still go to the dataset, marked speculative).

Which outcome to assume: the more probable one under the acceptance measured so far (the most
probable path of the accept/reject tree). Along that path the chain advances
(1 − q^k)/(1 − q) trials per round of k parallel calls, q = max(a, 1 − a).

Every trial's momenta and uniform come from the (seed, trial) stream, so what the chain does
does not depend on how far ahead it was speculated: with ``hmc.deterministic`` it is the same
for any number of DFT workers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from slhmc.hmc import NPTDraws, TrialDraws


@dataclass(eq=False)
class Proposal:
    """One trial in flight: its trajectory, then its reference label."""

    trial: int
    start: np.ndarray  # positions the trajectory starts from
    assumes_accept: bool | None  # assumed outcome of the previous proposal; None: starts from the chain state
    draws: TrialDraws
    model_version: int
    start_cell: np.ndarray  # the cell it starts in (Å); NVT: always the chain's
    cell_trial: NPTDraws | None = None  # NPT: this trial's cell-trial draws (None: a position trial)
    md: dict | None = None  # md_result
    label: dict | None = None  # label_result
    dead: bool = False  # dropped from the chain; its label (if it gets one) is speculative
    tasks: list = field(default_factory=list)  # broker tasks issued for it

    @property
    def end_cell(self) -> np.ndarray:
        """The cell of its end point (once ``md`` is in): a cell trial's new cell, else its start cell."""
        return self.md["cell"] if self.md.get("cell") is not None else self.start_cell


class AcceptanceEstimate:
    """Acceptance over the last ``window`` chain trials (prior: 1, i.e. speculate on acceptance)."""

    def __init__(self, window: int = 50) -> None:
        self.recent: deque[bool] = deque(maxlen=window)

    def add(self, accepted: bool) -> None:
        self.recent.append(accepted)

    @property
    def value(self) -> float:
        return float(np.mean(self.recent)) if self.recent else 1.0

    def assume_accept(self) -> bool:
        return self.value >= 0.5


class Pipeline:
    """The proposals in flight, in chain order, and which outcome the next one assumes.

    ``path``: ``workers.prefetch_path`` — "auto" (the more probable outcome under the measured
    acceptance), "accept" or "reject".
    """

    def __init__(self, path: str = "auto") -> None:
        self.proposals: list[Proposal] = []
        self.acceptance = AcceptanceEstimate()
        self.path = path

    def __len__(self) -> int:
        return len(self.proposals)

    def next_trial(self, chain_trial: int) -> int:
        """The first trial whose trajectory has not been started (``chain_trial``: the chain's next)."""
        return self.proposals[-1].trial + 1 if self.proposals else chain_trial

    def next_start(self, chain_positions: np.ndarray,
                   chain_cell: np.ndarray) -> tuple[bool | None, np.ndarray, np.ndarray] | None:
        """(assumed outcome of the last proposal, start positions, start cell) of the next proposal;
        None when it must wait (it assumes acceptance and the last proposal's end point is still
        being computed)."""
        if not self.proposals:
            return None, chain_positions, chain_cell
        prev = self.proposals[-1]
        assume_accept = self.acceptance.assume_accept() if self.path == "auto" else self.path == "accept"
        if assume_accept and prev.md is None:
            return None
        if not assume_accept:
            return False, prev.start, prev.start_cell
        return True, prev.md["positions"], prev.end_cell

    def append(self, proposal: Proposal) -> None:
        self.proposals.append(proposal)

    def pop_ready(self) -> Proposal | None:
        """The head proposal, once its label is in (trials finish strictly in chain order)."""
        if self.proposals and self.proposals[0].label is not None:
            return self.proposals.pop(0)
        return None

    def settle(self, accepted: bool, same_either_way: bool = False) -> list[Proposal]:
        """The trial before the head finished with ``accepted``: if the head assumed otherwise, it and
        everything after it leave the chain (marked dead; returned, so that their queued tasks can be
        cancelled; running ones finish and their labels are kept as speculative).
        ``same_either_way``: that trial proposed the state itself (an NPT cell trial whose inner
        chain did not move), so the head started from the right state whatever it assumed."""
        self.acceptance.add(accepted)
        if not self.proposals or same_either_way or self.proposals[0].assumes_accept == accepted:
            return []
        dropped, self.proposals = self.proposals, []
        for p in dropped:
            p.dead = True
        return dropped


def trials_per_round(acceptance: float, k: int) -> float:
    """Expected chain trials per round of k parallel reference calls along the most probable path."""
    q = max(acceptance, 1.0 - acceptance)
    return float(k) if q >= 1.0 else (1.0 - q**k) / (1.0 - q)
