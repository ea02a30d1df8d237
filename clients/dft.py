"""The DFT worker: labels structures with the reference calculator (energy, forces; the stress too
when the task asks for it and the code gives one: NPT runs)."""

from __future__ import annotations

import logging
import time

import numpy as np
from ase import Atoms

from .references import (
    ReferenceCalculationError,
    SCFNotConverged,
    is_stateless,
    lookup,
    make_calculator,
    reference_energy,
)
from .references.energy import EnergyProperty, HartreePath
from .references.scratch import mark_failed

log = logging.getLogger(__name__)


def hartree_path(reference: dict) -> HartreePath | None:
    """The Hartree -> eV constant a ``[reference]`` section's energies go through (None: not known,
    e.g. a code that reports eV itself, an analytic potential, a ``module:function`` factory)."""
    code = lookup(reference.get("calculator", ""))
    return code.hartree if code is not None else None


def check_same_units(local: dict, server: dict) -> str | None:
    """Why this worker's ``[reference]`` must not label the server's chain, or None: two constants
    differ, so labels of one structure would differ by more than rounding."""
    mine, theirs = hartree_path(local), hartree_path(server)
    if mine is not None and theirs is not None and mine.ev != theirs.ev:
        rel = abs(mine.ev - theirs.ev) / theirs.ev
        return (f"this worker's reference ({local['calculator']}) converts energies with {mine.source} "
                f"({mine.ev} eV), the server's ({server['calculator']}) with {theirs.source} ({theirs.ev} eV): "
                f"labels of one chain would differ by {rel:.2g} x |E|; use the server's calculator")
    return None


class DFTHandler:
    role = "dft"

    def __init__(self, local_reference: dict | None = None, local_config_dir: str | None = None) -> None:
        # a [reference] section from this machine's --config wins over the server's; a module:function
        # factory is then also looked for in that file's folder (local_config_dir)
        self.local_reference = local_reference
        self.local_config_dir = local_config_dir
        self.calc = None
        self.stateless = False
        self.energy_property: EnergyProperty = "free_energy"
        self.config_error: str | None = None
        self.no_stress_said = False

    def configure(self, config: dict) -> None:
        ref = self.local_reference or config["reference"]
        # the folder of the config that names the calculator: this worker's --config, else the server's
        # (found only where that path exists here too: the same machine, or a shared file system)
        config_dir = self.local_config_dir if self.local_reference else config.get("base_dir")
        self.close()  # a new server: a persistent client of the old one is not reused
        server_ref = config.get("reference")
        mismatch = check_same_units(ref, server_ref) if self.local_reference and server_ref else None
        if mismatch is not None:
            self.config_error = mismatch
            log.error("refusing to label this chain: %s", mismatch)
            return
        try:
            self.calc = make_calculator(ref["calculator"], ref.get("options") or {}, timeout=ref.get("timeout"),
                                        config_dir=config_dir,
                                        stress=(config.get("system") or {}).get("pressure") is not None)
        except Exception as err:  # reported with every task, so the server's log says what to fix
            self.config_error = f"{type(err).__name__}: {err}"
            log.error("cannot set up the reference calculator: %s", self.config_error)
            return
        self.config_error = None
        self.stateless = is_stateless(self.calc)
        code = lookup(ref["calculator"])
        self.energy_property = code.energy if code is not None else "free_energy"
        units = hartree_path(ref)
        log.info("reference calculator: %s%s", ref["calculator"],
                 f" (energies from Hartree with {units.source}, {units.ev} eV)" if units else "")

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
        # the stress first where wanted, then forces: calculators that compute everything in one run
        # (file-based codes) then answer the rest from cache instead of running again
        stress = self._stress(atoms) if msg.get("stress") else None
        forces = np.asarray(atoms.get_forces(), dtype=np.float64)
        energy = reference_energy(atoms, self.energy_property)
        seconds = time.perf_counter() - t0
        if getattr(self.calc, "converged", None) is False:  # ASE's Vasp (and Turbomole) say so, and raise nothing
            mark_failed(getattr(self.calc, "directory", None))  # keep the code's output to read
            raise SCFNotConverged(f"{type(self.calc).__name__}: the SCF did not converge (raise the code's SCF "
                                  "iteration limit, e.g. nelm for VASP, or loosen its convergence threshold)")
        if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
            mark_failed(getattr(self.calc, "directory", None))
            raise ReferenceCalculationError(f"reference returned a non-finite energy ({energy}) or forces")
        return "label_result", {"energy": energy, "forces": forces, "stress": stress, "seconds": seconds}

    def _stress(self, atoms: Atoms) -> np.ndarray | None:
        """The reference stress (Voigt, eV/Å³), or None where the code gives none (said once): the
        stress only trains the network, the chain never needs it."""
        if "stress" not in getattr(self.calc, "implemented_properties", ()):
            return self._no_stress(f"the reference calculator {type(self.calc).__name__} gives no stress")
        try:
            stress = np.asarray(atoms.get_stress(voigt=True), dtype=np.float64)
        except Exception as err:  # e.g. a code not asked for it in its input (QE: tstress)
            return self._no_stress(f"no stress from the reference ({type(err).__name__}: {err}); ask the code for "
                                   "its stress to train it (QE: tstress = true)")
        if not np.all(np.isfinite(stress)):
            raise ReferenceCalculationError(f"reference returned a non-finite stress ({stress})")
        return stress

    def _no_stress(self, why: str) -> None:
        if not self.no_stress_said:
            log.warning("%s: labels are fitted on energies and forces only", why)
            self.no_stress_said = True
