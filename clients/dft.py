"""The DFT worker: labels structures with the reference calculator (energy, forces)."""

from __future__ import annotations

import logging
import time

import numpy as np
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from .calculators import make_calculator

log = logging.getLogger(__name__)


class ReferenceCalculationError(RuntimeError):
    """A reference calculation that gave no usable answer."""


def reference_energy(atoms: Atoms) -> float:
    """The energy whose negative gradient the forces are.

    With electronic smearing, codes report an energy extrapolated to zero smearing but compute
    forces as gradients of the Mermin free energy; ASE calls the latter ``free_energy``. The chain
    and the training set must use the force-consistent one, or the HMC test and the network's
    energy/force fit would disagree. Without smearing the two are the same number.
    """
    try:
        return float(atoms.get_potential_energy(force_consistent=True))
    except PropertyNotImplementedError:
        return float(atoms.get_potential_energy())


def is_stateless(calc) -> bool:
    """Analytic references whose only state is a neighbour list. They are reset before every label
    so that a label is a pure function of its structure: ASE's lists reorder pairs depending on
    earlier calls, which moves energies in the 14th digit and would make a deterministic chain
    differ between resumes and worker counts."""
    from ase.calculators.emt import EMT
    from ase.calculators.lj import LennardJones
    from ase.calculators.morse import MorsePotential

    return isinstance(calc, (EMT, LennardJones, MorsePotential))


class DFTHandler:
    role = "dft"

    def __init__(self, local_reference: dict | None = None) -> None:
        # a [reference] section from this machine's --config wins over the server's
        self.local_reference = local_reference
        self.calc = None
        self.stateless = False
        self.config_error: str | None = None

    def configure(self, config: dict) -> None:
        ref = self.local_reference or config["reference"]
        self.close()  # a new server: a persistent client of the old one is not reused
        try:
            self.calc = make_calculator(ref["calculator"], ref.get("options") or {})
        except Exception as err:  # reported with every task, so the server's log says what to fix
            self.config_error = f"{type(err).__name__}: {err}"
            log.error("cannot set up the reference calculator: %s", self.config_error)
            return
        self.config_error = None
        self.stateless = is_stateless(self.calc)
        log.info("reference calculator: %s", ref["calculator"])

    def close(self) -> None:
        """Stop what the calculator keeps running (a socket client, a code's shell)."""
        calc, self.calc = self.calc, None
        if calc is not None and hasattr(calc, "close"):
            try:
                calc.close()
            except Exception as err:  # shutting down: report, do not mask the real exit reason
                log.warning("closing the reference calculator: %s", err)

    def handle(self, msg: dict) -> tuple[str, dict]:
        if msg["type"] != "label_task":
            raise ValueError(f"a dft worker does not handle {msg['type']}")
        if self.calc is None:
            raise ReferenceCalculationError(f"this worker has no reference calculator: {self.config_error}")
        atoms = Atoms(msg["numbers"], msg["positions"], cell=msg["cell"], pbc=msg["pbc"])
        if self.stateless:
            self.calc.reset()
        atoms.calc = self.calc
        t0 = time.perf_counter()
        # forces first: calculators that compute both in one run then answer the energy from cache
        forces = np.asarray(atoms.get_forces(), dtype=np.float64)
        energy = reference_energy(atoms)
        seconds = time.perf_counter() - t0
        if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
            raise ReferenceCalculationError(f"reference returned a non-finite energy ({energy}) or forces")
        return "label_result", {"energy": energy, "forces": forces, "seconds": seconds}
