"""The trained potential as an ASE calculator, and loading it from a run or a model file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from .network import BPNN, resolve_device
from .serialization import load_model


class BPNNCalculator(Calculator):
    """ASE calculator: energy (eV), forces (eV/Å) and stress (eV/Å³, Voigt order) of a BPNN."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: BPNN, info: dict | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.info = info or {}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        want_stress = "stress" in properties and a.cell.rank == 3
        ev = self.model.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, stress=want_stress)
        self.results = {"energy": ev.energy, "free_energy": ev.energy, "forces": ev.forces}
        if want_stress:
            s = ev.stress
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def newest_model_file(run_dir: str | Path) -> Path:
    files = sorted(Path(run_dir, "models").glob("model_*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no models/model_*.safetensors in {run_dir}")
    return files[-1]


def load_calculator(path: str | Path, device: str | None = None) -> BPNNCalculator:
    """An ASE calculator from a model file, or from a run directory (its newest model).

    ``device``: "cpu", "cuda", ...; by default the GPU when torch has one, else the CPU.
    """
    path = Path(path)
    if path.is_dir():
        path = newest_model_file(path)
    model, info = load_model(path, resolve_device(device))
    return BPNNCalculator(model, info)
