"""Quantum ESPRESSO ``pw.x`` through ASE's Espresso calculator (a fresh pw.x run per call).

Options (``[reference.options]``) are ASE's Espresso keywords — ``pseudopotentials`` (element ->
file), ``input_data`` (namelists), ``kpts`` — plus ``command`` (default "pw.x"; e.g. "mpirun -np 2
pw.x") and ``pseudo_dir`` (default Debian's /usr/share/espresso/pseudo from
quantum-espresso-data) and ``directory``. ``tprnfor`` is always on: the worker needs forces. Without
``directory`` each worker writes into a scratch directory of its own (``slhmc-pw-*`` in the
temporary folder), so several workers on one node never share files; it is removed when the worker
closes its calculator unless a call failed there (see :mod:`.scratch`).

The persistent alternative, which keeps pw.x and its wavefunctions alive between calls, is the
``socket`` reference (slhmc.clients.references.socket_bridge) with ``code = "espresso"``.
"""

from __future__ import annotations

import copy
from pathlib import Path

from ase.calculators.espresso import Espresso, EspressoProfile

from .errors import OptionError
from .factory import require_executable
from .scratch import ScratchCalculator

DEBIAN_PSEUDO_DIR = "/usr/share/espresso/pseudo"


class ScratchEspresso(ScratchCalculator, Espresso):
    """ASE's Espresso in a scratch directory of its own when given none; ``close()`` removes it."""

    scratch_prefix = "slhmc-pw-"


def check_espresso_inputs(command: str, pseudo_dir: str, pseudopotentials: dict | None) -> None:
    """Say what to fix before the first call: a missing executable or pseudopotential file."""
    require_executable(command, "espresso")
    if not pseudopotentials:
        raise OptionError(
            'espresso: reference.options.pseudopotentials is required, e.g. {Si = "Si.pz-vbc.UPF"}'
        )
    missing = [f for f in pseudopotentials.values() if not (Path(pseudo_dir) / f).is_file()]
    if missing:
        raise OptionError(
            f"espresso: pseudopotential file(s) {missing} not found in pseudo_dir {pseudo_dir!r}; "
            "set reference.options.pseudo_dir or install quantum-espresso-data"
        )


def espresso_calculator(
    pseudopotentials: dict | None = None,
    command: str = "pw.x",
    pseudo_dir: str = DEBIAN_PSEUDO_DIR,
    directory: str | None = None,
    input_data: dict | None = None,
    tstress: bool = False,
    **kwargs,
) -> Espresso:
    """ASE's Espresso calculator, checked and set up for a DFT worker (forces on, own directory;
    ``tstress``: the stress too, which NPT runs ask for)."""
    check_espresso_inputs(command, pseudo_dir, pseudopotentials)
    data = copy.deepcopy(input_data or {})
    data.setdefault("control", {})["tprnfor"] = True
    if tstress:
        data["control"]["tstress"] = True
    return ScratchEspresso(profile=EspressoProfile(command=command, pseudo_dir=pseudo_dir), directory=directory or None,
                           pseudopotentials=pseudopotentials, input_data=data, **kwargs)
