"""Which registry codes can run on this machine (``slhmc codes``)."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from .registry import CODES

INSTALL_SCRIPT = "run_scripts/install_dft_codes.sh"
# the codes that script installs (apt packages on Debian, pip in the venv), with the flag each needs
_SCRIPT_CODES = {"pyscf": "", "tblite": "", "espresso": "", "socket": "", "cp2k": "", "gpaw": "--with-gpaw"}


def _where(executable: str) -> tuple[str | None, bool]:
    """(full path, on PATH): a program found only next to this interpreter (a venv's bin/ that is not
    on PATH) is not on PATH, and a command naming it bare through a shell or mpirun fails there."""
    on_path = shutil.which(executable)
    if on_path:
        return on_path, True
    return shutil.which(executable, path=str(Path(sys.executable).parent)), False


def code_status(name: str) -> tuple[bool, str]:
    """Whether registry code ``name`` can run on this machine, and what it found or misses."""
    code = CODES[name]
    try:
        getattr(importlib.import_module(code.module), code.attribute)
    except ImportError as err:
        return False, f"Python module missing ({err}); {code.install}"
    kept = "; one process kept alive between calls" if code.keeps_process_alive else ""
    command = next((f"{var}={os.environ[var]}" for var in code.command_env if os.environ.get(var)), None)
    if command:
        return True, command + kept
    if not code.executables:
        return True, code.module + kept
    on_path, aside = [], []
    for exe in code.executables:
        where, is_on_path = _where(exe)
        if where and is_on_path:
            on_path.append(where)
        elif where:
            aside.append(where)
    if not on_path and not aside:
        return False, f"{' or '.join(code.executables)}: not on PATH; {code.install}"
    detail = f"on PATH: {', '.join(on_path) or 'none'}"
    if aside:
        detail += (f"; not on PATH, only next to the interpreter (the socket bridge starts a client from there; "
                   f"a shell or mpirun in reference.options needs the full path): {', '.join(aside)}")
    return True, detail + kept


def install_script() -> str:
    """The install script's path: absolute in a source checkout, else as it is named in the repository."""
    path = Path(__file__).resolve().parents[2] / INSTALL_SCRIPT
    return str(path) if path.is_file() else INSTALL_SCRIPT


def install_hint(missing: Iterable[str]) -> str | None:
    """What to do about the codes ``slhmc codes`` found missing, one line each after a heading (None
    when none is): the install script for those it installs, the code's own instruction for the
    others (VASP: the user's own build)."""
    missing = list(missing)
    if not missing:
        return None
    by_script = [name for name in missing if name in _SCRIPT_CODES]
    lines = [f"missing here: {', '.join(missing)}"]
    if by_script:
        flags = sorted({_SCRIPT_CODES[name] for name in by_script} - {""})
        command = " ".join([install_script(), *flags])
        lines.append(f"  {', '.join(by_script)}: run {command} (Quantum ESPRESSO and CP2K from Debian's packages; "
                     "PySCF, tblite, i-PI's driver and, with --with-gpaw, GPAW with pip; then it runs slhmc codes)")
    lines.extend(f"  {name}: {CODES[name].install}" for name in missing if name not in _SCRIPT_CODES)
    return "\n".join(lines)
