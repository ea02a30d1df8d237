"""Reference calculators by name: the ASE calculators a DFT worker can run.

``[reference] calculator`` is one of the built-ins below or ``"package.module:function"``, a
factory importable from PYTHONPATH that is called with ``[reference.options]`` as keyword
arguments and returns an ASE calculator. Built-ins take the options as constructor keywords.

Option names are checked here, in one place, for the config check (``slhmc run``/``server``,
before any process starts) and the DFT worker alike: an unknown name is an error that lists the
accepted ones. ASE calculators that take ``**kwargs`` store any name silently (tblite's
``methd = "GFN1-xTB"`` ran GFN2-xTB), so for those the accepted names are their
``default_parameters``.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import shlex
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from ase.calculators.calculator import Calculator


class Builtin(NamedTuple):
    module: str
    attr: str
    defaults: dict
    # option names are known from the class itself (its signature, or default_parameters for an
    # ASE calculator taking **kwargs), and its module imports in milliseconds without the code's own
    # heavy libraries, so the config check may import it even on a server that runs no DFT
    checked: bool = False


# Imported only when used: a DFT worker for PySCF does not need tblite installed, and the server
# needs none of them (it imports the ``checked`` ones where installed, to check option names).
BUILTIN: dict[str, Builtin] = {
    # ASE's effective-medium theory (Al, Cu, Ag, Au, Ni, Pd, Pt): a fast stand-in for DFT
    "emt": Builtin("ase.calculators.emt", "EMT", {}, checked=True),
    "lj": Builtin("ase.calculators.lj", "LennardJones", {}, checked=True),
    "morse": Builtin("ase.calculators.morse", "MorsePotential", {}, checked=True),
    # Kohn-Sham DFT, molecules and periodic cells (pip install pyscf; pyscf itself is imported at
    # the first call, so checking option names needs only our module)
    "pyscf": Builtin("slhmc.clients.pyscf_calculator", "PySCFCalculator", {}, checked=True),
    # GFN1/GFN2-xTB: a semi-empirical quantum reference, not DFT (pip install tblite)
    "tblite": Builtin("tblite.ase", "TBLite", {"method": "GFN2-xTB", "verbosity": 0}, checked=True),
    # Quantum ESPRESSO pw.x, a fresh run per call (apt-get install quantum-espresso); options other
    # than ours go on to ASE's Espresso, which knows pw.x's keywords
    "espresso": Builtin("slhmc.clients.espresso", "espresso_calculator", {}),
    # any i-PI client kept alive between calls: pw.x --ipi, CP2K, LAMMPS, i-pi-py_driver
    "socket": Builtin("slhmc.clients.socket_bridge", "SocketBridge", {}, checked=True),
    # CP2K through ASE, which keeps one cp2k_shell alive between calls (apt-get install cp2k)
    "cp2k": Builtin("slhmc.clients.cp2k", "cp2k_calculator", {}),
    # GPAW (pip install gpaw, after Debian's libxc-dev libfftw3-dev libopenmpi-dev)
    "gpaw": Builtin("gpaw", "GPAW", {}),
    # VASP through ASE (needs the user's VASP: ASE_VASP_COMMAND and VASP_PP_PATH)
    "vasp": Builtin("ase.calculators.vasp", "Vasp", {}),
}

# keywords of ASE's Calculator base class: bookkeeping, not options of the method
_ASE_BASE_KEYWORDS = frozenset(inspect.signature(Calculator.__init__).parameters) - {"self", "kwargs"}


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
        module_name, attr, defaults, _ = BUILTIN[name]
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


def accepted_options(name: str, factory: Callable[..., Calculator] | None = None) -> list[str] | None:
    """The option names ``reference.calculator = name`` accepts, or None where its factory passes
    unknown names on (``**kwargs``) to a code that judges them itself."""
    builtin = BUILTIN.get(name)
    if builtin is not None and not builtin.checked:
        return None
    factory = factory or resolve_factory(name)
    target = factory.func if isinstance(factory, functools.partial) else factory
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # a builtin function or extension type: nothing to introspect
        return None
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        # only a registered ASE calculator is known to take exactly its default_parameters
        if builtin is None or not (isinstance(target, type) and issubclass(target, Calculator)):
            return None
        names = (names - _ASE_BASE_KEYWORDS) | set(target.default_parameters)
    return sorted(names)


def check_options(name: str, options: Iterable[str], factory: Callable[..., Calculator] | None = None) -> None:
    """An unknown option name is an error that names it (``reference.options.KEY``) and lists the
    accepted ones."""
    accepted = accepted_options(name, factory)
    if accepted is None:
        return
    unknown = [key for key in options if key not in accepted]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, accepted, n=1)
        hints.append(f"reference.options.{key}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise CalculatorConfigError(
        f"{', '.join(hints)}: not {'an option' if len(unknown) == 1 else 'options'} of reference.calculator "
        f"{name!r}; it accepts {', '.join(accepted)}"
    )


def make_calculator(name: str, options: dict) -> Calculator:
    """A fresh calculator; errors say what to fix (unknown name, bad factory, wrong option)."""
    factory = resolve_factory(name)
    check_options(name, options, factory)
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


# executables a built-in needs besides its Python module. socket: any i-PI-capable client; for
# CP2K that is the ``cp2k`` binary (driver mode, ``RUN_TYPE DRIVER``), not ``cp2k_shell``
EXECUTABLES = {"espresso": ["pw.x"], "cp2k": ["cp2k_shell"], "vasp": ["vasp_std"],
               "socket": ["pw.x", "cp2k", "cp2k.psmp", "cp2k.ssmp", "i-pi-py_driver"]}


def _which(executable: str) -> str | None:
    """shutil.which, also looking next to this interpreter (a venv's bin/ that is not on PATH)."""
    return shutil.which(executable) or shutil.which(executable, path=str(_interpreter_dir()))


def _interpreter_dir() -> Path:
    import sys

    return Path(sys.executable).parent


def _where(executable: str) -> tuple[str | None, bool]:
    """(full path, on PATH): a program found only next to the interpreter is not on PATH, and a
    client command naming it bare (``i-pi-py_driver ...``) fails there."""
    on_path = shutil.which(executable)
    if on_path:
        return on_path, True
    return shutil.which(executable, path=str(_interpreter_dir())), False


def code_status(name: str) -> tuple[bool, str]:
    """Whether a built-in reference can run on this machine, and what it found or misses."""
    module_name, attr = BUILTIN[name].module, BUILTIN[name].attr
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
    if name == "socket":
        on_path, aside = [], []
        for exe in needed:
            where, is_on_path = _where(exe)
            if where and is_on_path:
                on_path.append(exe)
            elif where:
                aside.append(where)
        detail = f"i-PI clients on PATH: {', '.join(on_path) or 'none'}"
        if aside:
            detail += (f"; not on PATH, only next to the interpreter (the socket bridge starts it from there; "
                       f"a shell or mpirun in reference.options.client needs the full path): {', '.join(aside)}")
        return bool(on_path or aside), detail
    found = [exe for exe in needed if _which(exe)]
    return bool(found), (f"{_which(needed[0])}" if found else f"{needed[0]} not on PATH")
