"""The ML-MD worker: velocity Verlet with the autograd forces of one model version.

No thermostat, clipping or rescaling inside a trajectory: the map (r, p) -> (r', p') must be
time-reversible and volume-preserving for the HMC test to be exact.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from ase import units

from slhmc.potential.network import BPNN, resolve_device
from slhmc.potential.serialization import model_from_bytes

log = logging.getLogger(__name__)


def velocity_verlet(
    model: BPNN,
    numbers: np.ndarray,
    positions: np.ndarray,
    momenta: np.ndarray,
    masses: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    steps: int,
    timestep_fs: float,
) -> dict:
    """Integrate ``steps`` steps; returns end positions and momenta, ML energies and H_ML drift (eV)."""
    dt = timestep_fs * units.fs
    inv_m = 1.0 / masses[:, None]
    r, p = positions.copy(), momenta.copy()
    ev = model.evaluate(numbers, r, cell, pbc)
    e_start, forces = ev.energy, ev.forces
    h_start = e_start + 0.5 * float(np.sum(p * p * inv_m))
    for _ in range(steps):
        p = p + 0.5 * dt * forces
        r = r + dt * p * inv_m
        ev = model.evaluate(numbers, r, cell, pbc)
        forces = ev.forces
        p = p + 0.5 * dt * forces
    h_end = ev.energy + 0.5 * float(np.sum(p * p * inv_m))
    return {"positions": r, "momenta": p, "e_ml_start": e_start, "e_ml_end": ev.energy,
            "h_ml_drift": h_end - h_start}


class MLMDHandler:
    role = "mlmd"

    def __init__(self, device: str | None = None) -> None:
        self.device = resolve_device(device)
        self.models: dict[int, BPNN] = {}

    def configure(self, config: dict) -> None:
        self.models.clear()  # versions belong to one server's run

    def handle(self, msg: dict) -> tuple[str, dict]:
        if msg["type"] != "md_task":
            raise ValueError(f"an mlmd worker does not handle {msg['type']}")
        version = msg["model_version"]
        if msg.get("model") is not None:
            self.models = {version: model_from_bytes(msg["model"], self.device)[0]}  # keep only the newest
        if version not in self.models:
            raise RuntimeError(f"model {version} was not sent to this worker")
        t0 = time.perf_counter()
        out = velocity_verlet(self.models[version], msg["numbers"], msg["positions"], msg["momenta"],
                              msg["masses"], msg["cell"], msg["pbc"], msg["steps"], msg["timestep_fs"])
        return "md_result", {**out, "model_version": version, "seconds": time.perf_counter() - t0}
