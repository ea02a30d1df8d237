"""The HMC chain: per-trial randomness, kinetic energy and the exact Metropolis test.

Units are ASE's: eV, Å, amu, and ASE time, so that momenta p = m v have K = sum p^2 / (2 m) in eV.
"""

from __future__ import annotations

import math
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


def kinetic_energy(momenta: np.ndarray, masses: np.ndarray) -> float:
    return float(0.5 * np.sum(momenta**2 / masses[:, None]))


def delta_h(k_old: float, e_old: float, k_new: float, e_new: float) -> float:
    """The exact ΔH = [K(p') + E_ref(r')] - [K(p) + E_ref(r)] (eV)."""
    return (k_new + e_new) - (k_old + e_old)


def accept(delta_h_eV: float, temperature_K: float, uniform: float) -> bool:
    """Metropolis: accept with probability min(1, exp(-ΔH / k_B T))."""
    if delta_h_eV <= 0:
        return True
    return uniform < math.exp(-delta_h_eV / (units.kB * temperature_K))
