"""Which registry codes can run on this machine (``slhmc codes``)."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

from .registry import CODES


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
