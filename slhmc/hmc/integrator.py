"""Velocity Verlet: the HMC proposal map (r, p) -> (r', p').

No thermostat, clipping or rescaling inside a trajectory: the map must be time-reversible and
volume-preserving for the HMC test to be exact, which velocity Verlet is when the forces are a
function of the positions alone (``tests/test_integrator.py`` checks both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ase import units

# positions (N, 3) Å -> (energy eV, forces (N, 3) eV/Å)
EnergyForces = Callable[[np.ndarray], tuple[float, np.ndarray]]


@dataclass(frozen=True)
class Trajectory:
    positions: np.ndarray  # end point, Å
    momenta: np.ndarray  # end momenta, amu Å / ASE time
    e_start: float  # potential energy of the driving forces at the start, eV
    e_end: float  # ... and at the end, eV
    h_drift: float  # (E + K) at the end minus at the start, eV: the integration error


def velocity_verlet(
    energy_forces: EnergyForces,
    positions: np.ndarray,
    momenta: np.ndarray,
    masses: np.ndarray,
    steps: int,
    timestep_fs: float,
) -> Trajectory:
    """Integrate ``steps`` steps of ``timestep_fs`` with the forces of ``energy_forces``."""
    dt = timestep_fs * units.fs
    inv_m = 1.0 / masses[:, None]
    r, p = positions.copy(), momenta.copy()
    e_start, forces = energy_forces(r)
    energy = e_start
    h_start = e_start + 0.5 * float(np.sum(p * p * inv_m))
    for _ in range(steps):
        p = p + 0.5 * dt * forces
        r = r + dt * p * inv_m
        energy, forces = energy_forces(r)
        p = p + 0.5 * dt * forces
    h_end = energy + 0.5 * float(np.sum(p * p * inv_m))
    return Trajectory(r, p, e_start, energy, h_end - h_start)
