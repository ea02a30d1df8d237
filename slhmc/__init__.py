"""slhmc: self-learning hybrid Monte Carlo (Nagai et al., Phys. Rev. B 102, 041124(R) (2020)).

The Python API (each name is imported on first use, so ``import slhmc`` stays cheap)::

    slhmc.run(config, out, resume=False) -> slhmc.Run   # run to the end, as `slhmc run` does
    slhmc.Run(run_dir)                                  # trials, chain, dataset, models, summary()
    slhmc.analyze(dir) -> dict                          # what `slhmc analyze` writes to summary.json
    slhmc.load_calculator(run_dir_or_model_file)        # the trained network as an ASE calculator
    slhmc.Config, slhmc.ConfigError, slhmc.load_config  # the validated config
    slhmc.RunError, slhmc.RunDirectoryError              # a run that failed; an out that holds a run (or none)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it; imported when first asked for (torch only with load_calculator)
_LAZY = {
    "run": "slhmc.api",
    "Run": "slhmc.api",
    "RunError": "slhmc.api",
    "RunDirectoryError": "slhmc.server.outputs",
    "analyze": "slhmc.api",
    "thermal_expansion": "slhmc.api",
    "load_calculator": "slhmc.potential",
    "Config": "slhmc.config",
    "ConfigError": "slhmc.config",
    "load_config": "slhmc.config",
}

__all__ = ["Config", "ConfigError", "Run", "RunDirectoryError", "RunError", "__version__", "analyze",
           "load_calculator", "load_config", "run", "thermal_expansion"]

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports these on first use
    from slhmc.api import Run, RunError, analyze, run, thermal_expansion
    from slhmc.config import Config, ConfigError, load_config
    from slhmc.potential import load_calculator
    from slhmc.server.outputs import RunDirectoryError


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'slhmc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
