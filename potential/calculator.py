"""The trained potential as an ASE calculator, and loading it from a run or a model file."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols

from slhmc.rundir import newest_model_file

from .fast import FastPotential
from .network import BPNN, resolve_device
from .serialization import load_model

log = logging.getLogger(__name__)


class BPNNCalculator(Calculator):
    """ASE calculator: energy (eV), forces (eV/Å) and stress (eV/Å³, Voigt order) of a BPNN.

    Every calculation also checks whether the network extrapolates (BPNN.count_extrapolating):
    ``results["extrapolating_atoms"]`` is the number of atoms with a symmetry function outside
    the training range (None if the model has no recorded range), and
    ``results["extrapolating_per_element"]`` the same by element symbol. Running counters since
    construction or :meth:`reset_extrapolation_counter`: ``evaluations`` (calculations made) and
    ``extrapolating_evaluations`` (those with at least one such atom). The first extrapolating
    calculation after a reset is logged as a warning unless ``warn_extrapolation`` is False
    (``slhmc md`` reports it itself, with the MD step).

    Energy, forces and stress come from :class:`FastPotential` (the analytic gradient, with a Verlet
    neighbour list kept from call to call: MD steps reuse it) unless ``fast`` is False, which uses
    ``model.evaluate`` (autograd) every call; both give the same numbers to rounding.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: BPNN, info: dict | None = None, warn_extrapolation: bool = True,
                 fast: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.info = info or {}
        self.warn_extrapolation = warn_extrapolation
        self.fast = fast
        self._fast: FastPotential | None = None
        self.reset_extrapolation_counter()

    @property
    def checks_extrapolation(self) -> bool:
        """Whether the model has a recorded training range, i.e. extrapolation is checked at all."""
        return self.model.has_feature_range()

    def reset_extrapolation_counter(self) -> None:
        self.evaluations = 0
        self.extrapolating_evaluations = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        want_stress = "stress" in properties and a.cell.rank == 3
        if self.fast:
            if self._fast is None or self._fast.model is not self.model:  # built for the current model
                self._fast = FastPotential(self.model)
            ev = self._fast.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, stress=want_stress)
        else:
            ev = self.model.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, stress=want_stress)
        self.results = {"energy": ev.energy, "free_energy": ev.energy, "forces": ev.forces,
                        "extrapolating_atoms": ev.extrapolating_atoms}
        self.evaluations += 1
        if ev.extrapolating_per_element is not None:
            symbols = [chemical_symbols[z] for z in self.model.spec.elements]
            self.results["extrapolating_per_element"] = dict(zip(symbols, ev.extrapolating_per_element, strict=True))
            if ev.extrapolating_atoms:
                self.extrapolating_evaluations += 1
                if self.extrapolating_evaluations == 1 and self.warn_extrapolation:
                    log.warning("the network extrapolates: %d of %d atoms have a symmetry function outside "
                                "the training range; its energy and forces here are not to be trusted",
                                ev.extrapolating_atoms, len(a))
        if want_stress:
            s = ev.stress
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def load_calculator(path: str | Path, device: str | None = None) -> BPNNCalculator:
    """An ASE calculator from a model file, or from a run directory (its newest model).

    ``device``: "cpu", "cuda", ...; by default the GPU when torch has one, else the CPU.
    """
    path = Path(path)
    if path.is_dir():
        path = newest_model_file(path)
    model, info = load_model(path, resolve_device(device))
    return BPNNCalculator(model, info)
