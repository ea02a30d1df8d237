"""Scratch directories of the reference codes: made when no ``directory`` option is given, removed
when their calculator is closed or the interpreter exits.

A code's scratch directory holds its input, output and restart files (CP2K's wavefunction files run
to megabytes per worker), so a cluster job that never removed them would fill the node's /tmp. One
is kept, and said so once, when a reference call failed in it: the error message points the user at
the code's output or ``client.log`` there. A directory the user named (``reference.options.directory``)
is never registered here and never removed.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class _Scratch:
    pid: int  # the process that made it: a forked child never removes its parent's directories
    owner: weakref.ref | None  # its calculator, closed (stopping its code) before the directory goes
    failed: bool = False


_lock = threading.Lock()
_made: dict[str, _Scratch] = {}


def scratch_directory(prefix: str, owner: object | None = None) -> str:
    """A new directory under the temporary folder (``$TMPDIR``, else /tmp), named ``PREFIX...`` and
    registered for removal; ``owner`` (held weakly) is closed first at interpreter exit, so that no
    code still runs in it when it goes."""
    path = tempfile.mkdtemp(prefix=prefix)
    with _lock:
        _made[path] = _Scratch(os.getpid(), weakref.ref(owner) if owner is not None else None)
    return path


def is_scratch(directory: str | os.PathLike | None) -> bool:
    """Whether ``directory`` is a scratch directory of ours not yet released."""
    return directory is not None and os.fspath(directory) in _made


def mark_failed(directory: str | os.PathLike | None) -> None:
    """A reference call failed in ``directory``: keep it (a no-op for a directory not of ours)."""
    if directory is None:
        return
    with _lock:
        entry = _made.get(os.fspath(directory))
        if entry is not None:
            entry.failed = True


def release(directory: str | os.PathLike | None) -> None:
    """Remove scratch ``directory``, or, if a reference call failed in it, keep it and say so once.
    A no-op for a directory not of ours, or one already released."""
    if directory is None:
        return
    path = os.fspath(directory)
    with _lock:
        entry = _made.pop(path, None)
    if entry is None:
        return
    if entry.failed:
        log.warning("kept the scratch directory %s of a failed reference call", path)
        return
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        log.warning("could not remove the scratch directory %s: %s", path, err)


def release_all() -> None:
    """At interpreter exit: close each live owner (stopping its code), then release every scratch
    directory this process made."""
    with _lock:
        mine = [(path, entry) for path, entry in _made.items() if entry.pid == os.getpid()]
    for path, entry in mine:
        owner = entry.owner() if entry.owner is not None else None
        close = getattr(owner, "close", None)
        if close is not None:
            try:
                close()
            except Exception as err:  # exiting: report, and still release the directory
                log.warning("closing the reference calculator at exit: %s", err)
        release(path)


atexit.register(release_all)


class ScratchCalculator:
    """Mixin for an ASE calculator (first in the bases) that runs in a scratch directory of its own
    when it is given no ``directory``.

    A ``calculate`` that raises marks the directory failed (kept); ``close()`` closes the code's own
    calculator (its process) and then releases the directory. Used again after ``close()``, the
    calculator gets a fresh scratch directory.
    """

    scratch_prefix = "slhmc-"

    def __init__(self, *args: Any, directory: str | os.PathLike | None = None, **kwargs: Any) -> None:
        self._scratch: str | None = None
        self._owns_scratch = directory is None
        if directory is None:
            directory = self._scratch = scratch_directory(self.scratch_prefix, owner=self)
        try:
            super().__init__(*args, directory=directory, **kwargs)
        except BaseException:
            release(self._scratch)  # nothing ran in it yet
            self._scratch = None
            raise

    def calculate(self, *args: Any, **kwargs: Any) -> None:
        if self._owns_scratch and not is_scratch(self._scratch):  # closed, now used again
            self._scratch = scratch_directory(self.scratch_prefix, owner=self)
            # ASE's CP2K keeps its directory as str, the file-IO calculators (Espresso) as a Path
            self.directory = self._scratch if isinstance(self.directory, str) else Path(self._scratch)
        try:
            super().calculate(*args, **kwargs)  # type: ignore[misc]
        except Exception:
            mark_failed(self._scratch)
            raise

    def close(self) -> None:
        try:
            close = getattr(super(), "close", None)
            if close is not None:
                close()
        finally:
            scratch, self._scratch = getattr(self, "_scratch", None), None
            release(scratch)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # collected or exiting: nothing to report to
            pass
