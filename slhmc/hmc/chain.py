"""The chain state and one Metropolis step on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import acceptance
from .draws import TrialDraws


@dataclass
class ChainState:
    """Where the chain is: the next trial's index, its start point and that point's reference energy."""

    trial: int  # trials done so far (the next trial's index)
    accepted: int
    positions: np.ndarray  # Å
    cell: np.ndarray  # Å, (3, 3); fixed in NVT
    energy: float | None  # E_ref(positions), eV; None until the start structure is labelled

    def checkpoint_fields(self) -> dict:
        return {"trial": self.trial, "accepted": self.accepted, "positions": self.positions.tolist(),
                "cell": self.cell.tolist(), "e_chain": self.energy}

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> ChainState:
        return cls(int(ckpt["trial"]), int(ckpt["accepted"]), np.array(ckpt["positions"], dtype=np.float64),
                   np.array(ckpt["cell"], dtype=np.float64), ckpt["e_chain"])


@dataclass(frozen=True)
class Step:
    """The outcome of one trial's Metropolis test (energies in eV)."""

    accepted: bool
    delta_h: float
    k_old: float
    k_new: float
    e_old: float  # the chain's reference energy before the step


def metropolis_step(
    state: ChainState,
    draws: TrialDraws,
    end_positions: np.ndarray,
    end_momenta: np.ndarray,
    e_end: float,
    masses: np.ndarray,
    temperature_K: float,
    delta_h: Callable[[float, float, float, float], float] = acceptance.delta_h,
) -> Step:
    """Test the proposal (``end_positions``, ``end_momenta``) with reference energy ``e_end``
    against the chain state and advance ``state`` in place (trial count, and the point on
    acceptance). ``delta_h`` may be swapped by a test that shows the statistics catch a wrong rule."""
    if state.energy is None:
        raise ValueError("the chain's start point has no reference energy yet")
    k_old = acceptance.kinetic_energy(draws.momenta, masses)
    k_new = acceptance.kinetic_energy(end_momenta, masses)
    e_old = state.energy
    dh = delta_h(k_old, e_old, k_new, e_end)
    accepted = acceptance.accept(dh, temperature_K, draws.uniform)
    if accepted:
        state.positions, state.energy = end_positions, e_end
        state.accepted += 1
    state.trial += 1
    return Step(accepted, dh, k_old, k_new, e_old)
