"""Kinetic energy, the exact ΔH and the Metropolis test (eV, amu, ASE time)."""

from __future__ import annotations

import math

import numpy as np
from ase import units


def kinetic_energy(momenta: np.ndarray, masses: np.ndarray) -> float:
    """K = sum p^2 / (2 m), eV."""
    return float(0.5 * np.sum(momenta**2 / masses[:, None]))


def delta_h(k_old: float, e_old: float, k_new: float, e_new: float) -> float:
    """The exact ΔH = [K(p') + E_ref(r')] - [K(p) + E_ref(r)] (eV): reference energies at both ends,
    whatever energy drove the trajectory."""
    return (k_new + e_new) - (k_old + e_old)


def accept(delta_h_eV: float, temperature_K: float, uniform: float) -> bool:
    """Metropolis: accept with probability min(1, exp(-ΔH / k_B T))."""
    if delta_h_eV <= 0:
        return True
    return uniform < math.exp(-delta_h_eV / (units.kB * temperature_K))
