"""The reference codes slhmc knows by name: one record per code, in one registry.

A record states where the code's factory is (imported only when used: a DFT worker for PySCF does
not need tblite, and the server needs none of them), which executables it runs, how its option
names are checked, whether it keeps a process alive between calls, and how its energy is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from .energy import ASE_HARTREE, CP2K_HARTREE, EnergyProperty, HartreePath

# How a code's option names (``[reference.options]`` keys) are checked:
# - "signature": the factory's keyword parameters are the options;
# - "default_parameters": an ASE calculator taking ``**kwargs``, which would store any name silently
#   (tblite's ``methd = "GFN1-xTB"`` ran GFN2-xTB); its ``default_parameters`` are the options;
# - "code": names pass on to the code's own ASE calculator, which judges them. Its module is not
#   imported by the config check (a server need not have the code).
# For the first two the module imports in milliseconds without the code's own heavy libraries,
# so the config check imports it wherever it is installed, even on a server that runs no DFT.
OptionCheck = Literal["signature", "default_parameters", "code"]

_DFT_CODES_SCRIPT = "run_scripts/install_dft_codes.sh"


@dataclass(frozen=True)
class ReferenceCode:
    """One reference code: what ``reference.calculator = name`` builds and how it behaves."""

    name: str
    factory: str  # "module:attribute", called with [reference.options] (and ``defaults``) as keywords
    options: OptionCheck
    install: str  # what to do where the module or executable is missing
    defaults: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    # executables it runs besides its Python module; any one of them is enough
    executables: tuple[str, ...] = ()
    # environment variables that name its command instead of an executable on PATH
    command_env: tuple[str, ...] = ()
    # one code process lives from the first call to close(): its start-up is paid once per worker
    keeps_process_alive: bool = False
    # the option (seconds) bounding each wait on that process; reference.timeout fills it when unset
    wait_option: str | None = None
    # analytic, its only state a neighbour list: reset before every label, so that a label is a pure
    # function of its structure (ASE's lists reorder pairs depending on earlier calls, which moves
    # energies in the 14th digit and would make a deterministic chain differ between resumes)
    stateless: bool = False
    # the Hartree -> eV constant its energies go through (None: reports eV itself, or analytic)
    hartree: HartreePath | None = None
    energy: EnergyProperty = "free_energy"  # the ASE property that is its force-consistent energy
    # the boolean option that makes the code compute its stress (NPT runs set it unless given);
    # None: it computes the stress when asked (EMT, VASP, CP2K, GPAW, an i-PI client's virial)
    stress_option: str | None = None

    @property
    def module(self) -> str:
        return self.factory.partition(":")[0]

    @property
    def attribute(self) -> str:
        return self.factory.partition(":")[2]


_RECORDS = (
    # ASE's effective-medium theory (Al, Cu, Ag, Au, Ni, Pd, Pt): a fast stand-in for DFT
    ReferenceCode("emt", "ase.calculators.emt:EMT", "default_parameters", "part of ASE", stateless=True),
    ReferenceCode("lj", "ase.calculators.lj:LennardJones", "default_parameters", "part of ASE", stateless=True),
    ReferenceCode("morse", "ase.calculators.morse:MorsePotential", "default_parameters", "part of ASE",
                  stateless=True),
    # Kohn-Sham DFT, molecules and periodic cells; pyscf itself is imported at the first call, so
    # checking option names needs only our module
    ReferenceCode("pyscf", "slhmc.clients.references.pyscf:PySCFCalculator", "signature", "pip install pyscf",
                  hartree=ASE_HARTREE),
    # GFN1/GFN2-xTB: a semi-empirical quantum reference, not DFT. It reports one energy (no
    # free_energy), the one its forces are the gradient of.
    ReferenceCode("tblite", "tblite.ase:TBLite", "default_parameters", "pip install tblite",
                  defaults=MappingProxyType({"method": "GFN2-xTB", "verbosity": 0}), hartree=ASE_HARTREE,
                  energy="energy"),
    # Quantum ESPRESSO pw.x, a fresh run per call; options other than ours go on to ASE's Espresso,
    # which knows pw.x's keywords. ASE reads pw.x's total energy (the one its forces are consistent
    # with) as both energy and free_energy.
    ReferenceCode("espresso", "slhmc.clients.references.espresso:espresso_calculator", "code",
                  f"install Quantum ESPRESSO ({_DFT_CODES_SCRIPT} or apt-get install quantum-espresso)",
                  executables=("pw.x",), hartree=ASE_HARTREE, stress_option="tstress"),
    # any i-PI client kept alive between calls: pw.x --ipi, CP2K's driver mode (the cp2k binary with
    # RUN_TYPE DRIVER, not cp2k_shell), LAMMPS, i-pi-py_driver. i-PI speaks Hartree; ASE converts.
    ReferenceCode("socket", "slhmc.clients.references.socket_bridge:SocketBridge", "signature",
                  f"install an i-PI client (pip install ipi for i-pi-py_driver; pw.x or cp2k: {_DFT_CODES_SCRIPT})",
                  executables=("pw.x", "cp2k", "cp2k.psmp", "cp2k.ssmp", "i-pi-py_driver"),
                  keeps_process_alive=True, wait_option="timeout", hartree=ASE_HARTREE),
    # CP2K through ASE, which keeps one cp2k_shell alive between calls and converts with CP2K's own
    # Hartree (UNITS_EV_A)
    ReferenceCode("cp2k", "slhmc.clients.references.cp2k:cp2k_calculator", "code",
                  f"install CP2K ({_DFT_CODES_SCRIPT} or apt-get install cp2k cp2k-data)",
                  executables=("cp2k_shell",), keeps_process_alive=True, hartree=CP2K_HARTREE),
    ReferenceCode("gpaw", "gpaw:GPAW", "code",
                  "pip install gpaw, after Debian's libxc-dev libfftw3-dev libopenmpi-dev"),
    # VASP through ASE: the user's VASP, named by ASE_VASP_COMMAND (potentials: VASP_PP_PATH).
    # ASE reads OUTCAR's TOTEN as free_energy, the sigma -> 0 energy as energy.
    ReferenceCode("vasp", "ase.calculators.vasp:Vasp", "code",
                  "set ASE_VASP_COMMAND (and VASP_PP_PATH) to your VASP; input writing works without",
                  executables=("vasp_std",), command_env=("ASE_VASP_COMMAND", "VASP_COMMAND")),
)

# the registry: every built-in reference code by name, in the order `slhmc codes` lists them
CODES: Mapping[str, ReferenceCode] = MappingProxyType({code.name: code for code in _RECORDS})


def lookup(name: str) -> ReferenceCode | None:
    """The record of ``reference.calculator = name``; None for a ``"module:function"`` factory (or
    an unknown name, which :func:`~slhmc.clients.references.factory.check_name` refuses)."""
    return CODES.get(name)
