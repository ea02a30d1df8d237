"""CP2K through ASE's CP2K calculator, which keeps one ``cp2k_shell`` process alive between calls
(its start-up, 2–3 s here, is paid once per worker).

Options are ASE's CP2K keywords (``xc``, ``basis_set``, ``pseudo_potential``, ``cutoff`` in eV,
``inp`` for extra CP2K input, ...) plus ``command`` (default "cp2k_shell"; e.g.
"mpirun -np 4 cp2k_shell.psmp"). Each worker runs in its own scratch directory.
"""

from __future__ import annotations

import tempfile

from ase.calculators.cp2k import CP2K

from .factory import require_executable


def cp2k_calculator(command: str = "cp2k_shell", directory: str | None = None, **kwargs) -> CP2K:
    """ASE's CP2K calculator in its own scratch directory, after checking that ``command`` runs here."""
    require_executable(command, "cp2k")
    return CP2K(command=command, directory=directory or tempfile.mkdtemp(prefix="slhmc-cp2k-"), **kwargs)
