"""Reference codes: the ASE calculators a DFT worker labels structures with.

``[reference] calculator`` names a code of the registry (:data:`CODES`, one
:class:`ReferenceCode` record per code) or ``"package.module:function"``, a factory importable
from PYTHONPATH or from the config file's folder that is called with ``[reference.options]`` as
keyword arguments and returns an ASE calculator. Option names are checked before any process
starts and again on the DFT worker, with the same function (:func:`check_options`).

- ``registry``: the records and :func:`lookup`;
- ``factory``: name -> factory -> calculator, option checking;
- ``energy``: which energy is read, and in which Hartree;
- ``status``: what is installed here (``slhmc codes``);
- ``errors``: the errors, each one of ASE's calculator errors;
- ``scratch``: the codes' scratch directories, removed at close and at exit unless a call failed there;
- ``pyscf``, ``espresso``, ``cp2k``, ``socket_bridge``: slhmc's own code adapters, imported only when used.
"""

from .energy import ASE_HARTREE, CP2K_HARTREE, HartreePath, reference_energy
from .errors import (
    CalculatorConfigError,
    ClientError,
    CodeNotFoundError,
    OptionError,
    ReferenceCalculationError,
    SCFNotConverged,
)
from .factory import (
    accepted_options,
    add_config_dir,
    check_config,
    check_name,
    check_options,
    is_stateless,
    make_calculator,
    require_executable,
    resolve_factory,
)
from .registry import CODES, ReferenceCode, lookup
from .status import code_status

__all__ = [
    "ASE_HARTREE", "CP2K_HARTREE", "CODES", "CalculatorConfigError", "ClientError", "CodeNotFoundError",
    "HartreePath", "OptionError", "ReferenceCalculationError", "ReferenceCode", "SCFNotConverged",
    "accepted_options", "add_config_dir", "check_config", "check_name", "check_options", "code_status",
    "is_stateless", "lookup", "make_calculator", "reference_energy", "require_executable", "resolve_factory",
]
