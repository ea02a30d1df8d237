"""``slhmc analyze DIR``: what a run sampled and how efficiently, from its outputs (also while it runs).

DIR is either a run directory (:mod:`slhmc.analysis.chain`: acceptance, ⟨E_pot⟩ with its error
bar, the ML error of the proposals and of the trajectories' ΔE per model version) or an
``slhmc md`` directory (:mod:`slhmc.analysis.md`: phonon DOS, extrapolation). Both also get the
radial distribution and mean square displacement (:mod:`slhmc.analysis.structure`) and PNG plots
(:mod:`slhmc.analysis.plots`); the files are read through :mod:`slhmc.rundir`, the error bars
come from :mod:`slhmc.statistics`.
"""

from __future__ import annotations

from pathlib import Path

from slhmc.rundir import is_md_dir

from .chain import analyze_run
from .md import analyze_md

__all__ = ["analyze", "analyze_md", "analyze_run"]


def analyze(path: str | Path, plots: bool = True) -> int:
    """Analyse a run or an ``slhmc md`` directory: prints a summary, writes summary.json, rdf.json
    and (``plots``) PNG files into it. Returns the exit status: 1 if there is nothing to analyse yet."""
    path = Path(path)
    if is_md_dir(path):
        return analyze_md(path, plots)
    return analyze_run(path, plots)
