"""Each trial's randomness: momenta and the Metropolis uniform from a stream keyed by (seed, trial).

Units are ASE's: eV, Å, amu, and ASE time, so that momenta p = m v have K = sum p^2 / (2 m) in eV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import units


def trial_random(seed: int, trial: int) -> np.random.Generator:
    """The random stream of one trial: Philox keyed by (seed, trial), independent of everything else.

    Counter-based, so trial t draws the same numbers whether it is proposed now, after a restart,
    or speculatively by another worker.
    """
    return np.random.Generator(np.random.Philox(key=np.array([seed, trial], dtype=np.uint64)))


@dataclass(frozen=True)
class TrialDraws:
    momenta: np.ndarray  # (N, 3), amu Å / ASE time
    uniform: float  # in [0, 1), for the Metropolis test


def draw(seed: int, trial: int, masses: np.ndarray, temperature_K: float) -> TrialDraws:
    """Momenta p ~ N(0, m k_B T) per component, then the acceptance uniform."""
    rng = trial_random(seed, trial)
    sigma = np.sqrt(masses * units.kB * temperature_K)[:, None]
    momenta = rng.standard_normal((len(masses), 3)) * sigma
    return TrialDraws(momenta, float(rng.random()))
