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

    logged = False  # True: the worker's log already says why (no traceback per task)


# Which Hartree -> eV constant each reference path converts energies with. Two DFT workers of one
# chain must use the same one: CP2K's own constant (cp2k_shell, UNITS_EV_A; CODATA 2006 in
# CP2K 2023.1) and ASE's (CODATA 2014, the i-PI bridge, whose protocol speaks Hartree) differ by
# 7.9e-8 relative, 3.7e-5 eV for H2O — enough for the same structure to get two energies.
ASE_HARTREE = ("ASE's CODATA 2014 Hartree", 27.211386024367243)
CP2K_HARTREE = ("CP2K's own Hartree (CODATA 2006)", 27.21138386)
HARTREE_PATHS: dict[str, tuple[str, float]] = {
    "socket": ASE_HARTREE, "pyscf": ASE_HARTREE, "tblite": ASE_HARTREE, "espresso": ASE_HARTREE,
    "cp2k": CP2K_HARTREE,
}


def hartree_path(reference: dict) -> tuple[str, float] | None:
    """The Hartree -> eV constant a ``[reference]`` section's energies go through (None: not known,
    e.g. a code that reports eV itself, or an analytic potential)."""
    return HARTREE_PATHS.get(reference.get("calculator", ""))


def check_same_units(local: dict, server: dict) -> str | None:
    """Why this worker's ``[reference]`` must not label the server's chain, or None."""
    mine, theirs = hartree_path(local), hartree_path(server)
    if mine is not None and theirs is not None and mine[1] != theirs[1]:
        rel = abs(mine[1] - theirs[1]) / theirs[1]
        return (f"this worker's reference ({local['calculator']}) converts energies with {mine[0]} "
                f"({mine[1]} eV), the server's ({server['calculator']}) with {theirs[0]} ({theirs[1]} eV): "
                f"labels of one chain would differ by {rel:.2g} x |E|; use the server's calculator")
    return None


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
        server_ref = config.get("reference")
        mismatch = check_same_units(ref, server_ref) if self.local_reference and server_ref else None
        if mismatch is not None:
            self.config_error = mismatch
            log.error("refusing to label this chain: %s", mismatch)
            return
        try:
            self.calc = make_calculator(ref["calculator"], ref.get("options") or {})
        except Exception as err:  # reported with every task, so the server's log says what to fix
            self.config_error = f"{type(err).__name__}: {err}"
            log.error("cannot set up the reference calculator: %s", self.config_error)
            return
        self.config_error = None
        self.stateless = is_stateless(self.calc)
        from .socket_bridge import SocketBridge

        if isinstance(self.calc, SocketBridge) and self.calc.timeout is None and ref.get("timeout"):
            # reference.timeout covers the wait for the client's connection too, not only the server's
            # bookkeeping: a client that never connects must not hold this worker for ever
            self.calc.timeout = float(ref["timeout"])
        units = hartree_path(ref)
        log.info("reference calculator: %s%s", ref["calculator"],
                 f" (energies from Hartree with {units[0]}, {units[1]} eV)" if units else "")

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
            err = ReferenceCalculationError(f"this worker has no reference calculator: {self.config_error}")
            err.logged = True  # said once, at configure
            raise err
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
