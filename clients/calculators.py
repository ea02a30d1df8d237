"""Reference calculators by name: the ASE calculators a DFT worker can run.

``[reference] calculator`` is one of the built-ins below or ``"package.module:function"``, a
factory importable from PYTHONPATH that is called with ``[reference.options]`` as keyword
arguments and returns an ASE calculator. Built-ins take the options as constructor keywords.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable

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
}


class CalculatorConfigError(ValueError):
    pass


def resolve_factory(name: str) -> Callable[..., Calculator]:
    """The factory behind a ``reference.calculator`` name: a builtin or an importable ``module:function``."""
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
    if ":" not in name:
        raise CalculatorConfigError(
            f"reference.calculator {name!r} is unknown; use one of {sorted(BUILTIN)} or 'module:function'"
        )
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
