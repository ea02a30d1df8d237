"""Reference calculators by name: the ASE calculators a DFT worker can run.

``[reference] calculator`` is one of the built-ins below or ``"package.module:function"``, a
factory importable from PYTHONPATH that is called with ``[reference.options]`` as keyword
arguments and returns an ASE calculator. Built-ins take the options as constructor keywords.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from ase.calculators.calculator import Calculator


def _emt(**options) -> Calculator:
    from ase.calculators.emt import EMT

    return EMT(**options)


def _lj(**options) -> Calculator:
    from ase.calculators.lj import LennardJones

    return LennardJones(**options)


def _morse(**options) -> Calculator:
    from ase.calculators.morse import MorsePotential

    return MorsePotential(**options)


BUILTIN: dict[str, Callable[..., Calculator]] = {"emt": _emt, "lj": _lj, "morse": _morse}


class CalculatorConfigError(ValueError):
    pass


def resolve_factory(name: str) -> Callable[..., Calculator]:
    """The factory behind a ``reference.calculator`` name: a builtin or an importable ``module:function``."""
    if name in BUILTIN:
        return BUILTIN[name]
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
