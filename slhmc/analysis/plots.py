"""Every plot of ``slhmc analyze``: matplotlib (Agg backend, files only), PNG at 120 dpi.

A run directory gets acceptance.png, energy.png, ml_error.png, delta_e_error.png (when the trials
record the ΔE fields), rdf.png and msd.png; an ``slhmc md`` directory gets dos.png and rdf.png.
Each function takes numbers already computed (by slhmc.analysis.chain / .md) and returns the
names of the files it wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import units

from slhmc.spectra import EV_PER_THZ

DPI = 120


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_rdf(rdf_data: dict, title: str, path: Path) -> None:
    """One curve per element pair of :func:`slhmc.analysis.structure.rdf`'s result."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for pair, d in rdf_data["pairs"].items():
        ax.plot(d["r"], d["g"], label=pair)
    ax.set(xlabel="r (Å)", ylabel=rdf_data["kind"], title=title)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_run(run_dir: Path, trials: list[dict], summary: dict, sliding: np.ndarray, rdf_data: dict,
             msd_data: np.ndarray) -> list[str]:
    """The plots of a run directory. ``summary``: slhmc.analysis.chain.summarize's (with
    ``temperature_K`` in K); ``sliding``: acceptance over windows of ``summary["acceptance_window"]``
    trials, aligned with the last trials; ``msd_data``: Å² per chain frame."""
    plt = _pyplot()
    written = []
    idx = np.array([t["trial"] for t in trials])
    accepted = np.array([bool(t["accepted"]) for t in trials], dtype=float)
    models = np.array([t["model"] for t in trials])
    changes = idx[1:][np.diff(models) != 0]

    def finish(fig, name: str) -> None:
        _save(fig, run_dir / name)
        written.append(name)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(idx[len(idx) - len(sliding):], sliding, label=f"sliding window of {summary['acceptance_window']} trials")
    ax.axhline(accepted.mean(), color="gray", ls="--", label=f"overall {accepted.mean():.3f}")
    for k, c in enumerate(changes):
        ax.axvline(c, color="C3", lw=0.6, alpha=0.6, label="new model version" if k == 0 else None)
    ax.set(xlabel="trial", ylabel="acceptance", ylim=(-0.02, 1.02), title="Acceptance")
    ax.legend(loc="lower right", fontsize=8)
    finish(fig, "acceptance.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    per_atom = np.array([t["n_atoms"] for t in trials])
    ax.plot(idx, np.array([t["e_ref"] for t in trials]) / per_atom, ".", ms=2, alpha=0.4, label="proposals (reference)")
    ax.plot(idx, np.array([t["e_chain"] for t in trials]) / per_atom, lw=1, label="chain state")
    e = summary["e_pot_eV_per_atom"]
    if e:
        ax.axhline(e["mean"], color="k", ls="--", lw=0.8, label=f"⟨E⟩ = {e['mean']:.5f} ± {e['error']:.5f}")
    ax.set(xlabel="trial", ylabel="reference energy (eV/atom)", title="Potential energy")
    ax.legend(fontsize=8)
    finish(fig, "energy.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    models_summary = summary["models"]
    versions = [int(v) for v in models_summary]
    ax.plot(versions, [m["ml_error_rms_mev_per_atom"] for m in models_summary.values()], "o-", label="rms")
    ax.plot(versions, [m["ml_error_std_mev_per_atom"] for m in models_summary.values()], "s--",
            label="std (offset removed)")
    ax.set_yscale("log")
    ax.set(xlabel="model version", ylabel="|E_ref − E_ML| (meV/atom)", title="ML error of the proposals")
    ax.set_xticks(versions)
    ax.legend(fontsize=8)
    finish(fig, "ml_error.png")

    if summary.get("delta_e"):
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        left.plot(versions, [m["delta_e_error_rms_mev_per_atom"] for m in models_summary.values()], "o-", color="C0")
        left.set(xlabel="model version", ylabel="rms (ΔE_ML − ΔE_ref) (meV/atom)",
                 title="Error of the trajectories' ΔE")
        left.set_xticks(versions)
        sizes = {t["n_atoms"] for t in trials}
        if summary["temperature_K"] and len(sizes) == 1:
            scale = 1e3 * units.kB * summary["temperature_K"] / sizes.pop()  # meV/atom per kT of the cell
            top = left.secondary_yaxis("right", functions=(lambda y: y / scale, lambda x: x * scale))
            top.set_ylabel("rms (ΔE_ML − ΔE_ref) (kT, whole cell)")
        right.plot(versions, [m["acceptance"] for m in models_summary.values()], "o-", label="observed")
        if summary["temperature_K"]:
            right.plot(versions, [m["acceptance_predicted"] for m in models_summary.values()], "s--",
                       label="predicted from the ΔE error")
            right.plot(versions, [m["acceptance_expected"] for m in models_summary.values()], "^:",
                       label="mean min(1, exp(−ΔH/kT))")
        right.set(xlabel="model version", ylabel="acceptance", ylim=(-0.02, 1.02), title="Acceptance per model")
        right.set_xticks(versions)
        right.legend(fontsize=8, loc="lower right")
        finish(fig, "delta_e_error.png")

    if rdf_data:
        plot_rdf(rdf_data, "Radial distribution of the chain", run_dir / "rdf.png")
        written.append("rdf.png")

    if len(msd_data):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        stride = max(1, len(trials) // max(len(msd_data), 1))
        ax.plot(np.arange(len(msd_data)) * stride, msd_data)
        ax.set(xlabel="trial", ylabel="MSD (Å²)", title="Mean square displacement of the chain")
        finish(fig, "msd.png")
    return written


def plot_md(md_dir: Path, nu: np.ndarray, dos: dict[str, np.ndarray], peak_THz: float, temperature_K: float,
            rdf_data: dict) -> list[str]:
    """The plots of an ``slhmc md`` directory: the DOS curves ``dos`` (1/THz, "total" and per
    element) on the frequency axis ``nu`` (THz), shown up to about twice ``peak_THz``; g(r)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for k, g in dos.items():
        ax.plot(nu, g, label="total" if k == "total" else k, lw=1.6 if k == "total" else 1.0)
    ax.set(xlim=(0, min(nu[-1], 2.0 * peak_THz + 2)), xlabel="frequency (THz)",
           ylabel="DOS (1/THz)", title=f"VACF phonon DOS, {temperature_K:.0f} K")
    top = ax.secondary_xaxis("top", functions=(lambda x: 1e3 * x * EV_PER_THZ, lambda e: e / (1e3 * EV_PER_THZ)))
    top.set_xlabel("energy (meV)")
    ax.legend(fontsize=8)
    _save(fig, md_dir / "dos.png")
    written = ["dos.png"]
    if rdf_data:
        plot_rdf(rdf_data, f"Radial distribution, {temperature_K:.0f} K", md_dir / "rdf.png")
        written.append("rdf.png")
    return written
