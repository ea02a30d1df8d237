"""PySCF as a reference: Kohn–Sham DFT for molecules and periodic cells, warm between calls.

A thin ASE calculator of our own rather than PySCF's ``pyscf_ase.PySCF``: that one needs a PySCF
method object built for a fixed molecule before the first structure is known, which a DFT
worker configured from TOML does not have. Here the molecule (or cell) is built at the first call
from the structure itself, and PySCF's *gradient scanner* is kept between calls: each call reuses
the previous density matrix as its initial guess, so SCF on a slightly moved structure (the next
HMC proposal) takes a few iterations instead of a full cold start.

Periodic structures (all three directions periodic) use ``pyscf.pbc`` with GTH pseudopotentials
and, because PySCF computes periodic KS forces only with it, the multigrid numerical integrator;
they are Γ-point only and far slower than molecules.
"""

from __future__ import annotations

import logging

import numpy as np
from ase import units
from ase.calculators.calculator import Calculator, CalculatorSetupError, all_changes

from .errors import SCFNotConverged

log = logging.getLogger(__name__)


class PySCFCalculator(Calculator):
    """Kohn–Sham DFT with PySCF: energy (eV) and forces (eV/Å).

    Options (``[reference.options]``): ``xc`` (any PySCF/libxc functional name, default "PBE"),
    ``basis`` (default "def2-SVP"; periodic default "gth-dzvp"), ``pseudo`` (periodic only,
    default "gth-pbe"), ``charge``, ``spin`` (2S, unpaired electrons; >0 selects UKS),
    ``conv_tol`` (Hartree, default 1e-9), ``max_cycle`` (default 100), ``density_fit``
    (molecules: RI-J, faster for large basis sets), ``grid_level`` (molecules, default 3),
    ``verbose`` (PySCF's log level, default 0).
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        xc: str = "PBE",
        basis: str | None = None,
        pseudo: str = "gth-pbe",
        charge: int = 0,
        spin: int = 0,
        conv_tol: float = 1e-9,
        max_cycle: int = 100,
        density_fit: bool = False,
        grid_level: int = 3,
        verbose: int = 0,
    ) -> None:
        super().__init__()  # no **kwargs: a misspelt option must be an error, not ignored
        self.options = {"xc": xc, "basis": basis, "pseudo": pseudo, "charge": charge, "spin": spin,
                        "conv_tol": conv_tol, "max_cycle": max_cycle, "density_fit": density_fit,
                        "grid_level": grid_level, "verbose": verbose}
        self._scanner = None
        self._key = None  # (numbers, pbc, cell) the scanner was built for

    def _build(self, atoms) -> None:
        o = self.options
        spec = [(int(z), tuple(p)) for z, p in zip(atoms.numbers, atoms.positions, strict=True)]
        periodic = bool(atoms.pbc.all())
        if atoms.pbc.any() and not periodic:
            raise CalculatorSetupError("pyscf: use pbc all True (periodic cell) or all False (molecule)")
        if periodic:
            from pyscf.pbc import dft as pbc_dft
            from pyscf.pbc import gto as pbc_gto

            mol = pbc_gto.Cell(atom=spec, a=np.asarray(atoms.cell.array), basis=o["basis"] or "gth-dzvp",
                               pseudo=o["pseudo"], charge=o["charge"], spin=o["spin"], unit="Angstrom",
                               verbose=o["verbose"])
            mol.build()
            mf = (pbc_dft.UKS if o["spin"] else pbc_dft.RKS)(mol, xc=o["xc"]).multigrid_numint()
        else:
            from pyscf import dft, gto

            mol = gto.M(atom=spec, basis=o["basis"] or "def2-SVP", charge=o["charge"], spin=o["spin"],
                        unit="Angstrom", verbose=o["verbose"])
            mf = (dft.UKS if o["spin"] else dft.RKS)(mol, xc=o["xc"])
            mf.grids.level = o["grid_level"]
            if o["density_fit"]:
                mf = mf.density_fit()
        mf.conv_tol = o["conv_tol"]
        mf.max_cycle = o["max_cycle"]
        self._scanner = mf.nuc_grad_method().as_scanner()
        self._mol = mol
        self._key = (tuple(atoms.numbers), periodic, np.asarray(atoms.cell.array).tobytes() if periodic else b"")
        log.info("pyscf: %s %s/%s, %d electrons", "periodic" if periodic else "molecular", o["xc"],
                 mol.basis, mol.nelectron)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        periodic = bool(a.pbc.all())
        key = (tuple(a.numbers), periodic, np.asarray(a.cell.array).tobytes() if periodic else b"")
        if self._scanner is None or key != self._key:
            self._build(a)
        mol = self._mol.set_geom_(a.positions, unit="Angstrom", inplace=False)
        energy_ha, grad = self._scanner(mol)
        if not self._scanner.converged:
            raise SCFNotConverged(
                f"pyscf: SCF did not converge in {self.options['max_cycle']} cycles (conv_tol "
                f"{self.options['conv_tol']}); raise reference.options.max_cycle or check the structure"
            )
        energy = float(energy_ha) * units.Hartree
        self.results = {"energy": energy, "free_energy": energy,
                        "forces": -np.asarray(grad) * units.Hartree / units.Bohr}
