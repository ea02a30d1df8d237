"""``slhmc analyze DIR``: what a run sampled and how efficiently, from its outputs (also while it runs).

DIR is either a run directory (:mod:`slhmc.analysis.chain`: acceptance, ⟨E_pot⟩ with its error
bar, the ML error of the proposals and of the trajectories' ΔE per model version; for an NPT run
also ⟨V⟩, ⟨ρ⟩, var(V) and the cell, :mod:`slhmc.analysis.npt`) or an ``slhmc md`` directory
(:mod:`slhmc.analysis.md`: phonon DOS, extrapolation). Both also get the radial distribution
and mean square displacement (:mod:`slhmc.analysis.structure`) and PNG plots
(:mod:`slhmc.analysis.plots`); the files are read through :mod:`slhmc.rundir`, the error bars
come from :mod:`slhmc.statistics`. :mod:`slhmc.analysis.compare` (``--compare``) sets g(r) and the
E_pot distribution of several runs, md directories or trajectory files (AIMD) side by side.
:mod:`slhmc.analysis.expansion` (``slhmc analyze RUN RUN ...``) gives the thermal expansion of NPT
runs at several temperatures.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

from slhmc.rundir import SUMMARY, is_md_dir

from .chain import analyze_run
from .expansion import ExpansionError, thermal_expansion
from .md import analyze_md

__all__ = ["ExpansionError", "analyze", "analyze_md", "analyze_run", "summarize_dir", "thermal_expansion"]

log = logging.getLogger(__name__)


def analyze(path: str | Path, plots: bool = True) -> int:
    """Analyse a run or an ``slhmc md`` directory: prints a summary, writes summary.json, rdf.json
    and (``plots``) PNG files into it. Returns the exit status: 1 if there is nothing to analyse yet.
    Raises FileNotFoundError if ``path`` is not a directory."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no such directory: {path}")
    if is_md_dir(path):
        return analyze_md(path, plots)
    return analyze_run(path, plots)


def summarize_dir(path: str | Path, plots: bool = True) -> dict:
    """:func:`analyze` without printing (for ``slhmc.analyze``): writes the same files and returns
    what it wrote to summary.json. What analyze prints goes to this module's logger at INFO.

    FileNotFoundError for a missing directory; ValueError (saying why) while there is nothing to
    analyse yet."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no such directory: {path}")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the analysers print their report; here it is logged
        status = analyze(path, plots)
    for line in printed.getvalue().splitlines():
        log.info("%s", line)
    if status != 0:
        raise ValueError(printed.getvalue().strip() or f"nothing to analyse in {path} yet")
    return json.loads((path / SUMMARY).read_text())
