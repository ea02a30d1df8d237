"""How a reference's energy is read: which ASE property is the force-consistent one, and which
Hartree -> eV constant a code's energies went through."""

from __future__ import annotations

from typing import Literal, NamedTuple

from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError


class HartreePath(NamedTuple):
    """The Hartree -> eV constant a reference path converts energies with (eV per Hartree)."""

    source: str
    ev: float


# Two DFT workers of one chain must use the same constant: CP2K's own (cp2k_shell, UNITS_EV_A;
# CODATA 2006 in CP2K 2023.1) and ASE's (CODATA 2014; the i-PI bridge, whose protocol speaks
# Hartree) differ by 7.9e-8 relative, 3.7e-5 eV for H2O — enough for one structure to get two energies.
ASE_HARTREE = HartreePath("ASE's CODATA 2014 Hartree", 27.211386024367243)
CP2K_HARTREE = HartreePath("CP2K's own Hartree (CODATA 2006)", 27.21138386)


# the ASE property that is a code's force-consistent energy
EnergyProperty = Literal["free_energy", "energy"]


def reference_energy(atoms: Atoms, prop: EnergyProperty = "free_energy") -> float:
    """The energy (eV) whose negative gradient the forces are: ASE property ``prop``, else ``energy``.

    With electronic smearing, codes report an energy extrapolated to zero smearing but compute
    forces as gradients of the Mermin free energy; ASE calls the latter ``free_energy``. The chain
    and the training set must use the force-consistent one, or the HMC test and the network's
    energy/force fit would disagree. Without smearing the two are the same number; a calculator (or
    a labelled file) without ``free_energy`` has only the one energy.
    """
    if prop == "free_energy":
        try:
            return float(atoms.get_potential_energy(force_consistent=True))
        except PropertyNotImplementedError:
            pass
    return float(atoms.get_potential_energy())
