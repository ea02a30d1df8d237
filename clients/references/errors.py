"""Errors of the reference codes, each one of ASE's calculator errors: whoever handles ASE's
(``CalculatorError`` and its kinds) handles ours.

Set-up errors (before a calculation) say what to fix in ``[reference]``; they are also
``ValueError``, as a bad config value is everywhere else in slhmc.
"""

from __future__ import annotations

from ase.calculators.calculator import CalculationFailed, CalculatorSetupError, InputError, SCFError
from ase.calculators.calculator import EnvironmentError as CalculatorEnvironmentError


class CalculatorConfigError(CalculatorSetupError, ValueError):
    """A reference that cannot be set up as configured: an unknown name, a factory that does not
    import or is not callable. The message names the key to fix."""


class OptionError(CalculatorConfigError, InputError):
    """An option the reference does not take, or an input it needs (a pseudopotential file) missing."""


class CodeNotFoundError(CalculatorConfigError, CalculatorEnvironmentError):
    """The code's Python module or executable is not on this machine; the message says how to install it."""


class ClientError(CalculationFailed):
    """A code process kept alive between calls (an i-PI client) could not be listened for, started,
    reached, or gave no answer."""


class SCFNotConverged(SCFError):
    """The self-consistent field did not converge within the allowed cycles."""


class ReferenceCalculationError(CalculationFailed):
    """A reference calculation that gave no usable answer (no calculator, non-finite results)."""

    logged = False  # True: the worker's log already says why (no traceback per task)
