"""The ML-MD worker: velocity Verlet with the forces of one model version.

No thermostat, clipping or rescaling inside a trajectory: the map (r, p) -> (r', p') must be
time-reversible and volume-preserving for the HMC test to be exact. It is when the forces are a
function of the positions alone. They come from :class:`FastPotential`, the analytic gradient of
the model's energy (``tests/test_fast_forces.py``: equal to autograd's to 1e-9) over a Verlet
neighbour list that is rebuilt on a displacement criterion; the list decides only which pairs are
looked at, never the energy function, so the map stays the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
from ase import units

from slhmc.potential.fast import FastPotential
from slhmc.potential.network import BPNN, resolve_device
from slhmc.potential.serialization import model_from_bytes

log = logging.getLogger(__name__)


def velocity_verlet(
    energy_forces: Callable[[np.ndarray], tuple[float, np.ndarray]],
    positions: np.ndarray,
    momenta: np.ndarray,
    masses: np.ndarray,
    steps: int,
    timestep_fs: float,
) -> dict:
    """Integrate ``steps`` steps with the forces of ``energy_forces(positions) -> (eV, eV/Å)``.

    Returns end positions and momenta, the start and end potential energies and the drift of
    H = E + K over the trajectory (eV).
    """
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
    return {"positions": r, "momenta": p, "e_ml_start": e_start, "e_ml_end": energy,
            "h_ml_drift": h_end - h_start}


def model_forces(model: BPNN | FastPotential, numbers: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> Callable:
    """``energy_forces(positions)`` of one structure's atoms and cell; a bare model is wrapped in a
    fresh :class:`FastPotential` (pass one to keep its neighbour list from call to call)."""
    potential = model if isinstance(model, FastPotential) else FastPotential(model)
    numbers, cell, pbc = np.asarray(numbers), np.asarray(cell, dtype=np.float64), np.asarray(pbc, dtype=bool)

    def energy_forces(positions: np.ndarray) -> tuple[float, np.ndarray]:
        ev = potential.evaluate(numbers, positions, cell, pbc)
        return ev.energy, ev.forces

    return energy_forces


class MLMDHandler:
    role = "mlmd"

    def __init__(self, device: str | None = None) -> None:
        self.device = resolve_device(device)
        self.models: dict[int, FastPotential] = {}

    def configure(self, config: dict) -> None:
        self.models.clear()  # versions belong to one server's run

    def handle(self, msg: dict) -> tuple[str, dict]:
        if msg["type"] != "md_task":
            raise ValueError(f"an mlmd worker does not handle {msg['type']}")
        version = msg["model_version"]
        if msg.get("model") is not None:
            self.models = {version: FastPotential(model_from_bytes(msg["model"], self.device)[0])}  # the newest only
        if version not in self.models:
            raise RuntimeError(f"model {version} was not sent to this worker")
        # a fresh neighbour list per trajectory: which pairs it holds never changes the energy, but
        # it orders the sums, and a trajectory must be a function of its task alone (to the last
        # bit) for a deterministic chain to be the same after a resume or with another worker
        self.models[version].neighbors.reset()
        t0 = time.perf_counter()
        forces = model_forces(self.models[version], msg["numbers"], msg["cell"], msg["pbc"])
        out = velocity_verlet(forces, msg["positions"], msg["momenta"], msg["masses"], msg["steps"],
                              msg["timestep_fs"])
        return "md_result", {**out, "model_version": version, "seconds": time.perf_counter() - t0}
