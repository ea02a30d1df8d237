"""CP2K through ASE's CP2K calculator, which keeps one ``cp2k_shell`` process alive between calls
(its start-up, 2–3 s here, is paid once per worker).

Options are ASE's CP2K keywords (``xc``, ``basis_set``, ``pseudo_potential``, ``cutoff`` in eV,
``inp`` for extra CP2K input, ...) plus ``command`` (default "cp2k_shell"; e.g.
"mpirun -np 4 cp2k_shell.psmp") and ``directory``. Without ``directory`` each worker runs in a scratch
directory of its own (``slhmc-cp2k-*`` in the temporary folder), removed when the worker closes its
calculator unless a call failed there (see :mod:`.scratch`).
"""

from __future__ import annotations

from ase.calculators.cp2k import CP2K

from .factory import require_executable
from .scratch import ScratchCalculator


class ScratchCP2K(ScratchCalculator, CP2K):
    """ASE's CP2K in a scratch directory of its own when given none; ``close()`` stops cp2k_shell,
    then removes that directory."""

    scratch_prefix = "slhmc-cp2k-"


def cp2k_calculator(command: str = "cp2k_shell", directory: str | None = None, **kwargs) -> CP2K:
    """ASE's CP2K calculator in ``directory`` or its own scratch directory, after checking that
    ``command`` runs here."""
    require_executable(command, "cp2k")
    return ScratchCP2K(command=command, directory=directory or None, **kwargs)
