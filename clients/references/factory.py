"""From ``[reference]`` to an ASE calculator: the name resolved, the option names checked, the
calculator built.

``[reference] calculator`` is a code of the registry or ``"package.module:function"``, a factory
importable from PYTHONPATH or from the config file's folder (:func:`add_config_dir`) that is called
with ``[reference.options]`` as keyword arguments and returns an ASE calculator. Registry codes take
the options as their factory's keywords.

Option names are checked here, in one place, for the config check (``slhmc run``/``server``,
before any process starts) and the DFT worker alike: an unknown name is an error that lists the
accepted ones.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import logging
import shlex
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from ase.calculators.calculator import Calculator

from .errors import CalculatorConfigError, CodeNotFoundError, OptionError
from .registry import CODES, lookup

log = logging.getLogger(__name__)

# keywords of ASE's Calculator base class: bookkeeping, not options of the method
_ASE_BASE_KEYWORDS = frozenset(inspect.signature(Calculator.__init__).parameters) - {"self", "kwargs"}


def require_executable(command: str, name: str) -> None:
    """A clear error when code ``name``'s executable is not on PATH: its first registered executable
    within ``command`` (which may be ``mpirun -np 4 ...``), else the command's first word."""
    code = CODES[name]
    words = shlex.split(command)
    program = code.executables[0]
    executable = next((w for w in words if Path(w).name.startswith(program)), words[0])
    if shutil.which(executable) is None:
        raise CodeNotFoundError(
            f"{name}: {executable!r} is not on PATH; {code.install}, or set reference.options.command"
        )


def check_name(name: str) -> None:
    """A ``reference.calculator`` name has a valid form: a registry code or ``module:function`` (nothing imported)."""
    if lookup(name) is None and ":" not in name:
        raise CalculatorConfigError(
            f"reference.calculator {name!r} is unknown; use one of {sorted(CODES)} or 'module:function'"
        )


def add_config_dir(name: str, config_dir: str | Path | None) -> Path | None:
    """Where a ``module:function`` factory is looked for, besides PYTHONPATH: the folder of the config
    file that names it (``mycalc.py`` next to ``config.toml``). One rule for the config check and the
    DFT worker alike.

    The folder is appended to ``sys.path`` (installed packages and PYTHONPATH keep precedence, so a
    file next to the config never shadows a module slhmc itself imports later). Nothing is added for
    a registry code, for no folder, or for a folder that does not exist on this machine (a server's
    config folder seen from a worker on another machine). Returns the folder added (or already
    there), else None.
    """
    if config_dir is None or lookup(name) is not None or ":" not in name:
        return None
    folder = Path(config_dir).expanduser().resolve()
    if not folder.is_dir():
        return None
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
        log.debug("reference.calculator %r: %s added to the import path (the config's folder)", name, folder)
    return folder


def resolve_factory(name: str, config_dir: str | Path | None = None) -> Callable[..., Calculator]:
    """The factory behind a ``reference.calculator`` name: a registry code or an importable
    ``module:function``, looked for on PYTHONPATH and then in ``config_dir`` (the config file's folder,
    see :func:`add_config_dir`)."""
    check_name(name)
    code = lookup(name)
    if code is not None:
        try:
            cls = getattr(importlib.import_module(code.module), code.attribute)
        except ImportError as err:
            raise CodeNotFoundError(
                f"reference.calculator {name!r} needs {code.module.split('.')[0]!r}, which does not import here "
                f"({err}); install it on this DFT worker's machine ({code.install})"
            ) from None
        return functools.partial(cls, **code.defaults) if code.defaults else cls
    module_name, _, attr = name.partition(":")
    folder = add_config_dir(name, config_dir)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        where = f"PYTHONPATH and {folder} (the config's folder)" if folder else "PYTHONPATH"
        raise CalculatorConfigError(
            f"reference.calculator {name!r}: cannot import {module_name!r} ({err}); looked on {where}: put "
            f"{module_name.split('.')[0]}.py next to the config file or its folder on PYTHONPATH"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CalculatorConfigError(f"reference.calculator {name!r}: {module_name} has no callable {attr!r}")
    return factory


def accepted_options(name: str, factory: Callable[..., Calculator] | None = None) -> list[str] | None:
    """The option names ``reference.calculator = name`` accepts, or None where its factory passes
    unknown names on (``**kwargs``) to a code that judges them itself."""
    code = lookup(name)
    if code is not None and code.options == "code":
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
        if (code is None or code.options != "default_parameters"
                or not (isinstance(target, type) and issubclass(target, Calculator))):
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
    raise OptionError(
        f"{', '.join(hints)}: not {'an option' if len(unknown) == 1 else 'options'} of reference.calculator "
        f"{name!r}; it accepts {', '.join(accepted)}"
    )


def check_config(name: str, options: Iterable[str], here: bool = False,
                 config_dir: str | Path | None = None) -> None:
    """The config check of ``[reference]``, before any process starts: the name's form everywhere;
    the option names wherever they can be known without the code.

    ``here``: the DFT workers run on this machine, so a ``module:function`` factory or a code's
    module must import here too (from PYTHONPATH or ``config_dir``, the config file's folder, as on
    the DFT worker: :func:`add_config_dir`). Elsewhere the option names of registry codes whose
    module imports in milliseconds are checked where installed; the DFT worker checks the same names
    again.
    """
    check_name(name)
    code = lookup(name)
    factory = resolve_factory(name, config_dir) if here else None
    if factory is None and code is not None and code.options != "code":
        try:
            factory = resolve_factory(name)
        except CodeNotFoundError:
            pass  # not installed on this server: the DFT workers check the options
    if factory is not None:
        check_options(name, options, factory)


def make_calculator(name: str, options: dict, timeout: float | None = None,
                    config_dir: str | Path | None = None, stress: bool = False) -> Calculator:
    """A fresh calculator; errors say what to fix (unknown name, bad factory, wrong option).

    ``timeout`` (s, ``reference.timeout``): for a code that waits on a process it keeps alive, the
    bound of each wait where its options give none (a client that never connects must not hold a
    DFT worker for ever). ``config_dir``: the folder of the config file that names the calculator,
    where a ``module:function`` factory is also looked for (:func:`add_config_dir`). ``stress``:
    the labels need the stress (NPT), so a code that computes it only when told is told.
    """
    code = lookup(name)
    if stress and code is not None and code.stress_option and code.stress_option not in options:
        options = {**options, code.stress_option: True}
    if timeout and code is not None and code.wait_option and options.get(code.wait_option) is None:
        options = {**options, code.wait_option: float(timeout)}
    factory = resolve_factory(name, config_dir)
    check_options(name, options, factory)
    try:
        calc = factory(**options)
    except TypeError as err:
        params = ""
        try:
            params = f"; it accepts {list(inspect.signature(factory).parameters)}"
        except (TypeError, ValueError):
            pass
        raise OptionError(f"reference.options for {name!r}: {err}{params}") from None
    return calc


@functools.cache
def _stateless_classes() -> tuple[type, ...]:
    classes = []
    for code in CODES.values():
        if code.stateless:
            factory = resolve_factory(code.name)
            classes.append(factory.func if isinstance(factory, functools.partial) else factory)
    return tuple(classes)


def is_stateless(calc: Calculator) -> bool:
    """Whether ``calc`` is (or derives from) a stateless registry code's calculator, which the DFT
    worker resets before every label; a ``module:function`` factory returning one counts too."""
    return isinstance(calc, _stateless_classes())
