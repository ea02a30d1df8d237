"""The ML-MD worker: velocity Verlet (:func:`slhmc.hmc.velocity_verlet`) with the forces of one
model version; in NPT, for a cell trial, an inner chain of Metropolis cell steps
(:func:`slhmc.hmc.inner_cell_chain`) with the energy of one model version instead.

The forces must be a function of the positions alone for the proposal map to be time-reversible
and volume-preserving. They come from :class:`FastPotential`, the analytic gradient of
the model's energy (``tests/test_fast_forces.py``: equal to autograd's to 1e-9) over a Verlet
neighbour list that is rebuilt on a displacement criterion; the list decides only which pairs are
looked at, never the energy function, so the map stays the same.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from slhmc.hmc import CellDraws, EnergyForces, inner_cell_chain, velocity_verlet
from slhmc.potential.fast import FastPotential
from slhmc.potential.network import BPNN, resolve_device
from slhmc.potential.serialization import model_from_bytes

log = logging.getLogger(__name__)


def model_forces(model: BPNN | FastPotential, numbers: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> EnergyForces:
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
        if msg.get("cell_chain") is not None:
            return "md_result", {**self._cell_chain(self.models[version], msg), "model_version": version,
                                 "seconds": time.perf_counter() - t0}
        forces = model_forces(self.models[version], msg["numbers"], msg["cell"], msg["pbc"])
        out = velocity_verlet(forces, msg["positions"], msg["momenta"], msg["masses"], msg["steps"],
                              msg["timestep_fs"])
        return "md_result", {"positions": out.positions, "momenta": out.momenta, "e_ml_start": out.e_start,
                             "e_ml_end": out.e_end, "h_ml_drift": out.h_drift, "model_version": version,
                             "seconds": time.perf_counter() - t0}

    @staticmethod
    def _cell_chain(potential: FastPotential, msg: dict) -> dict:
        """A cell trial's proposal: the inner chain from the task's structure, ML energies at both
        ends from the same model (the correction needs E_ML(start) and E_ML(end) of one potential)."""
        spec = msg["cell_chain"]
        numbers, pbc = np.asarray(msg["numbers"]), np.asarray(msg["pbc"], dtype=bool)

        def energy(positions: np.ndarray, cell: np.ndarray) -> float:
            return potential.evaluate(numbers, positions, cell, pbc).energy

        e_start = energy(msg["positions"], msg["cell"])
        end = inner_cell_chain(energy, msg["positions"], msg["cell"], e_start,
                               CellDraws(spec["steps"], spec["uniforms"]), spec["mode"], spec["temperature_K"],
                               spec["pressure_eV_per_A3"])
        return {"positions": end.positions, "momenta": msg["momenta"], "e_ml_start": e_start, "e_ml_end": end.energy,
                "h_ml_drift": 0.0, "cell": end.cell, "cell_steps_accepted": end.accepted}
