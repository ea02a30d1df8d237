"""Reference calculators by name: the ASE calculators a DFT worker can run.

``[reference] calculator`` is one of the built-ins below or ``"package.module:function"``, a
factory importable from PYTHONPATH that is called with ``[reference.options]`` as keyword
arguments and returns an ASE calculator. Built-ins take the options as constructor keywords.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

from ase.calculators.calculator import Calculator

# name -> (module, class, default options). Imported only when used: a DFT worker for PySCF does
# not need tblite installed, and the server needs none of them.
BUILTIN: dict[str, tuple[str, str, dict]] = {
    # ASE's effective-medium theory (Al, Cu, Ag, Au, Ni, Pd, Pt): a fast stand-in for DFT
    "emt": ("ase.calculators.emt", "EMT", {}),
    "lj": ("ase.calculators.lj", "LennardJones", {}),
    "morse": ("ase.calculators.morse", "MorsePotential", {}),
    # Kohn-Sham DFT, molecules and periodic cells (pip install pyscf)
    "pyscf": ("slhmc.clients.pyscf_calculator", "PySCFCalculator", {}),
    # GFN1/GFN2-xTB: a semi-empirical quantum reference, not DFT (pip install tblite)
    "tblite": ("tblite.ase", "TBLite", {"method": "GFN2-xTB", "verbosity": 0}),
    # Quantum ESPRESSO pw.x, a fresh run per call (apt-get install quantum-espresso)
    "espresso": ("slhmc.clients.espresso", "espresso_calculator", {}),
    # any i-PI client kept alive between calls: pw.x --ipi, CP2K, LAMMPS, i-pi-py_driver
    "socket": ("slhmc.clients.socket_bridge", "SocketBridge", {}),
    # CP2K through ASE, which keeps one cp2k_shell alive between calls (apt-get install cp2k)
    "cp2k": ("slhmc.clients.cp2k", "cp2k_calculator", {}),
    # GPAW (pip install gpaw, after Debian's libxc-dev libfftw3-dev libopenmpi-dev)
    "gpaw": ("gpaw", "GPAW", {}),
    # VASP through ASE (needs the user's VASP: ASE_VASP_COMMAND and VASP_PP_PATH)
    "vasp": ("ase.calculators.vasp", "Vasp", {}),
}


class CalculatorConfigError(ValueError):
    pass


def require_executable(command: str, code: str, program: str, install_hint: str) -> None:
    """A clear error when ``program`` (the code's binary within ``command``) is not on PATH."""
    words = shlex.split(command)
    executable = next((w for w in words if Path(w).name.startswith(program)), words[0])
    if shutil.which(executable) is None:
        raise CalculatorConfigError(
            f"{code}: {executable!r} is not on PATH; {install_hint}, or set reference.options.command"
        )


def check_name(name: str) -> None:
    """A ``reference.calculator`` name has a valid form: a builtin or ``module:function`` (nothing imported)."""
    if name not in BUILTIN and ":" not in name:
        raise CalculatorConfigError(
            f"reference.calculator {name!r} is unknown; use one of {sorted(BUILTIN)} or 'module:function'"
        )


def resolve_factory(name: str) -> Callable[..., Calculator]:
    """The factory behind a ``reference.calculator`` name: a builtin or an importable ``module:function``."""
    check_name(name)
    if name in BUILTIN:
        module_name, attr, defaults = BUILTIN[name]
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except ImportError as err:
            raise CalculatorConfigError(
                f"reference.calculator {name!r} needs {module_name.split('.')[0]!r}, which does not import here "
                f"({err}); install it on this DFT worker's machine"
            ) from None
        return functools.partial(cls, **defaults) if defaults else cls
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise CalculatorConfigError(
            f"reference.calculator {name!r}: cannot import {module_name!r} ({err}); is it on PYTHONPATH?"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CalculatorConfigError(f"reference.calculator {name!r}: {module_name} has no callable {attr!r}")
    return factory


def make_calculator(name: str, options: dict) -> Calculator:
    """A fresh calculator; errors say what to fix (unknown name, bad factory, wrong option)."""
    factory = resolve_factory(name)
    try:
        calc = factory(**options)
    except TypeError as err:
        params = ""
        try:
            params = f"; it accepts {list(inspect.signature(factory).parameters)}"
        except (TypeError, ValueError):
            pass
        raise CalculatorConfigError(f"reference.options for {name!r}: {err}{params}") from None
    return calc


# executables a built-in needs besides its Python module (socket: any of these clients)
EXECUTABLES = {"espresso": ["pw.x"], "cp2k": ["cp2k_shell"], "vasp": ["vasp_std"],
               "socket": ["pw.x", "cp2k_shell", "i-pi-py_driver"]}


def _which(executable: str) -> str | None:
    """shutil.which, also looking next to this interpreter (a venv's bin/ that is not on PATH)."""
    import os
    import sys

    return shutil.which(executable, path=os.pathsep.join([str(Path(sys.executable).parent),
                                                         os.environ.get("PATH", "")]))


def code_status(name: str) -> tuple[bool, str]:
    """Whether a built-in reference can run on this machine, and what it found or misses."""
    module_name, attr, _ = BUILTIN[name]
    try:
        module = importlib.import_module(module_name)
        getattr(module, attr)
    except ImportError as err:
        return False, f"Python module missing ({err})"
    if name == "vasp":
        import os

        command = os.environ.get("ASE_VASP_COMMAND") or os.environ.get("VASP_COMMAND")
        found = command or _which("vasp_std")
        return bool(found), f"VASP: {found}" if found else "no VASP (set ASE_VASP_COMMAND); input writing works"
    needed = EXECUTABLES.get(name)
    if not needed:
        return True, f"{module_name}"
    found = [exe for exe in needed if _which(exe)]
    if name == "socket":
        return bool(found), f"i-PI clients found: {', '.join(found) or 'none'}"
    return bool(found), (f"{_which(needed[0])}" if found else f"{needed[0]} not on PATH")
