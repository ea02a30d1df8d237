"""Every plot of ``slhmc analyze``: matplotlib (Agg backend, files only), PNG at 120 dpi.

A run directory gets acceptance.png, energy.png, ml_error.png, delta_e_error.png (when the trials
record the ΔE fields), rdf.png and msd.png, and an NPT run also volume.png, volume_histogram.png
and (when the cells are known) lattice.png; an ``slhmc md`` directory gets dos.png, rdf.png and
msd.png; ``slhmc analyze --compare`` adds compare_rdf.png and compare_epot.png.
Each function takes numbers already computed (by slhmc.analysis.chain / .md) and returns the
names of the files it wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import units
from ase.geometry import cell_to_cellpar

from slhmc.spectra import EV_PER_THZ

from .npt import lattice_series

DPI = 120


def _floats(values) -> np.ndarray:
    """Values with None (nothing to show) as NaN, which matplotlib leaves out."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


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
    # NPT: a cell trial whose inner chain did not move has no reference energy (NaN: not drawn)
    ax.plot(idx, _floats(t["e_ref"] for t in trials) / per_atom, ".", ms=2, alpha=0.4, label="proposals (reference)")
    ax.plot(idx, np.array([t["e_chain"] for t in trials]) / per_atom, lw=1, label="chain state")
    e = summary["e_pot_eV_per_atom"]
    if e:
        ax.axhline(e["mean"], color="k", ls="--", lw=0.8, label=f"⟨E⟩ = {e['mean']:.5f} ± {e['error']:.5f} eV/atom")
        if e["discarded_trials"]:
            ax.axvspan(idx[0] - 0.5, idx[e["discarded_trials"]] - 0.5, color="0.85", zorder=0,
                       label=f"burn-in: {e['discarded_trials']} trials, not in ⟨E⟩")
    ax.set(xlabel="trial", ylabel="reference energy (eV/atom)", title="Potential energy")
    ax.legend(fontsize=8)
    finish(fig, "energy.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    models_summary = summary["models"]
    versions = [int(v) for v in models_summary]
    ax.plot(versions, _floats(m["ml_error_rms_mev_per_atom"] for m in models_summary.values()), "o-", label="rms")
    ax.plot(versions, _floats(m["ml_error_std_mev_per_atom"] for m in models_summary.values()), "s--",
            label="std (offset removed)")
    ax.set_yscale("log")
    ax.set(xlabel="model version", ylabel="|E_ref − E_ML| (meV/atom)", title="ML error of the proposals")
    ax.set_xticks(versions)
    ax.legend(fontsize=8)
    finish(fig, "ml_error.png")

    if summary.get("delta_e"):
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        left.plot(versions, _floats(m.get("delta_e_error_rms_mev_per_atom") for m in models_summary.values()), "o-",
                  color="C0")
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
            right.plot(versions, _floats(m.get("acceptance_predicted") for m in models_summary.values()), "s--",
                       label="predicted from the ΔE error")
            right.plot(versions, _floats(m.get("acceptance_expected") for m in models_summary.values()), "^:",
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


def plot_npt(run_dir: Path, trials: list[dict], npt: dict, frames: list) -> list[str]:
    """The volume plots of an NPT run: volume.png, the chain's volume (Å³) over the trials with the
    proposed volumes of the cell trials, ⟨V⟩ ± its error and the equilibration cut shaded;
    volume_histogram.png, the distribution of the equilibrated volumes with the normal density of
    the same mean and variance; lattice.png, a, b, c (Å) and the angles (degrees) over the trials
    (the records' ``cell``, else the chain frames').
    ``npt``: slhmc.analysis.npt.npt_statistics's block."""
    plt = _pyplot()
    written = []
    idx = np.array([t["trial"] for t in trials])
    volume = np.array([t["volume"] for t in trials], dtype=float)
    cut = npt["discarded_trials"]
    v = npt["volume_A3"]

    def shade(ax) -> None:
        if cut:
            ax.axvspan(idx[0] - 0.5, idx[min(cut, len(idx) - 1)] - 0.5, color="0.85", zorder=0,
                       label=f"equilibration: {cut} trials, not averaged")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    cell = [k for k, t in enumerate(trials) if t.get("kind") == "cell" and t.get("volume_proposed") is not None]
    if cell:
        ax.plot(idx[cell], [trials[k]["volume_proposed"] for k in cell], ".", ms=3, alpha=0.5, color="C1",
                label="proposed by cell trials")
    ax.plot(idx, volume, lw=1, color="C0", label="chain state")
    if v is not None:
        ax.axhline(v["mean"], color="k", ls="--", lw=0.8, label=f"⟨V⟩ = {v['mean']:.2f} ± {v['error']:.2f} Å³")
    if npt["volume_adapt_until"] and npt["volume_adapt_until"] <= idx[-1]:
        ax.axvline(npt["volume_adapt_until"] - 0.5, color="C3", lw=0.8, ls=":", label="volume step frozen")
    shade(ax)
    pressure = "" if npt["pressure_GPa"] is None else f", P = {npt['pressure_GPa']:g} GPa"
    ax.set(xlabel="trial", ylabel="volume (Å³)", title=f"Cell volume ({npt['cell']}{pressure})")
    ax.legend(fontsize=8)
    _save(fig, run_dir / "volume.png")
    written.append("volume.png")

    kept = volume[cut:]
    if len(kept) > 1:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(kept, bins=max(10, min(50, len(kept) // 20)), density=True, alpha=0.6, color="C0",
                label=f"{len(kept)} equilibrated trials")
        sd = float(np.std(kept, ddof=1))
        if sd > 0:
            x = np.linspace(kept.min() - sd, kept.max() + sd, 200)
            ax.plot(x, np.exp(-0.5 * ((x - kept.mean()) / sd) ** 2) / (sd * np.sqrt(2 * np.pi)), color="k", lw=1,
                    label=f"normal, σ_V = {sd:.2f} Å³")
        ax.set(xlabel="volume (Å³)", ylabel="probability density (1/Å³)", title="Volume distribution")
        ax.legend(fontsize=8)
        _save(fig, run_dir / "volume_histogram.png")
        written.append("volume_histogram.png")

    series = lattice_series(trials, frames)
    if series is None:
        return written
    x, cells = series
    par = np.array([cell_to_cellpar(c) for c in cells])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for k, name in enumerate("abc"):
        left.plot(x, par[:, k], lw=1, label=name)
    for k, name in enumerate(("α", "β", "γ")):
        right.plot(x, par[:, 3 + k], lw=1, label=name)
    shade(left)
    shade(right)
    left.set(xlabel="trial", ylabel="lattice length (Å)", title="Cell lengths")
    right.set(xlabel="trial", ylabel="angle (degrees)", title="Cell angles")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    _save(fig, run_dir / "lattice.png")
    written.append("lattice.png")
    return written


def plot_expansion(path: Path, points: list[dict], coefficients: list[dict]) -> None:
    """expansion.png: ⟨V⟩ per atom (Å³) against T (K) with error bars, one line per pressure, and
    beside it α_V (10⁻⁶/K) between consecutive temperatures at their midpoints.
    ``points``/``coefficients``: slhmc.analysis.expansion's."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    pressures: list = []
    for p in points:
        if p["pressure_GPa"] not in pressures:
            pressures.append(p["pressure_GPa"])
    for k, pressure in enumerate(pressures):
        label = "P unknown" if pressure is None else f"P = {pressure:g} GPa"
        ps = [p for p in points if p["pressure_GPa"] == pressure]
        left.errorbar([p["temperature_K"] for p in ps], [p["volume_A3_per_atom"]["mean"] for p in ps],
                      yerr=[p["volume_A3_per_atom"]["error"] for p in ps], fmt="o-", color=f"C{k}", capsize=3,
                      label=label)
        cs = [c for c in coefficients if c["pressure_GPa"] == pressure]
        if cs:
            right.errorbar([c["temperature_K"] for c in cs], [1e6 * c["alpha_V_per_K"]["value"] for c in cs],
                           xerr=[0.5 * (c["to_K"] - c["from_K"]) for c in cs],
                           yerr=[1e6 * c["alpha_V_per_K"]["error"] for c in cs], fmt="s", color=f"C{k}", capsize=3,
                           label=label)
    left.set(xlabel="temperature (K)", ylabel="⟨V⟩ per atom (Å³)", title="Volume per atom")
    left.legend(fontsize=8)
    right.axhline(0.0, color="0.6", lw=0.6)
    right.set(xlabel="temperature (K)", ylabel="α_V = Δln⟨V⟩/ΔT (10⁻⁶/K)",
              title="Volumetric thermal expansion (α = α_V/3)")
    if coefficients:
        right.legend(fontsize=8)
    _save(fig, path)


def plot_md(md_dir: Path, nu: np.ndarray, dos: dict[str, np.ndarray], peak_THz: float, temperature_K: float,
            rdf_data: dict, msd_data: np.ndarray, dt_fs: float, resolution: str) -> list[str]:
    """The plots of an ``slhmc md`` directory: the DOS curves ``dos`` (1/THz, "total" and per
    element) on the frequency axis ``nu`` (THz), shown up to about twice ``peak_THz``, with the
    ``resolution`` text (slhmc.analysis.md.resolution_text) under the title; g(r); the MSD
    ``msd_data`` (Å², one value per frame, frames ``dt_fs`` fs apart)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.0))
    for k, g in dos.items():
        ax.plot(nu, g, label="total" if k == "total" else k, lw=1.6 if k == "total" else 1.0)
    ax.set(xlim=(0, min(nu[-1], 2.0 * peak_THz + 2)), xlabel="frequency (THz)", ylabel="DOS (1/THz)")
    ax.set_title(f"VACF phonon DOS, {temperature_K:.0f} K\n{resolution}", fontsize=9)
    top = ax.secondary_xaxis("top", functions=(lambda x: 1e3 * x * EV_PER_THZ, lambda e: e / (1e3 * EV_PER_THZ)))
    top.set_xlabel("energy (meV)")
    ax.legend(fontsize=8)
    _save(fig, md_dir / "dos.png")
    written = ["dos.png"]
    if rdf_data:
        plot_rdf(rdf_data, f"Radial distribution, {temperature_K:.0f} K", md_dir / "rdf.png")
        written.append("rdf.png")
    if len(msd_data):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(np.arange(len(msd_data)) * dt_fs * 1e-3, msd_data)
        ax.set(xlabel="time (ps)", ylabel="MSD (Å²)",
               title=f"Mean square displacement, {temperature_K:.0f} K (first repeat)")
        _save(fig, md_dir / "msd.png")
        written.append("msd.png")
    return written


def plot_compare(out_dir: Path, r: np.ndarray, kind: str, rdfs: dict[str, dict[str, dict[str, np.ndarray]]],
                 edges: np.ndarray | None, hists: dict[str, dict]) -> list[str]:
    """The plots of ``slhmc analyze --compare``: compare_rdf.png, one column per element pair with
    every source's g(r) (``rdfs``: label -> pair -> {"g", "error"}, on ``r`` in Å) and a ±1σ band,
    and below it each source's difference from the first in units of the combined error;
    compare_epot.png, every source's E_pot-per-atom density (``hists``: label -> {"density",
    "error", "mean", "mean_error"} on the bin ``edges`` in eV/atom) with its band."""
    plt = _pyplot()
    written = []
    pairs = list(next(iter(rdfs.values()))) if rdfs else []
    if pairs:
        ref = next(iter(rdfs.values()))
        fig, axes = plt.subplots(2, len(pairs), figsize=(5 * len(pairs), 5.5 + 0.2 * len(rdfs)), squeeze=False,
                                 sharex="col", gridspec_kw={"height_ratios": [3, 1.3]})
        for col, pair in enumerate(pairs):
            top, bottom = axes[0][col], axes[1][col]
            for k, (label, curves) in enumerate(rdfs.items()):
                if pair not in curves:
                    continue
                g, err = curves[pair]["g"], curves[pair]["error"]
                top.plot(r, g, color=f"C{k}", lw=1.2, label=label)
                top.fill_between(r, g - err, g + err, color=f"C{k}", alpha=0.3, lw=0)
                if k:  # the difference from the first source, in units of the combined error
                    sigma = np.hypot(err, ref[pair]["error"])
                    z = np.divide(g - ref[pair]["g"], sigma, out=np.zeros_like(sigma), where=sigma > 0)
                    bottom.plot(r, z, color=f"C{k}", lw=1.0)
            top.set(ylabel=kind, title=f"{pair} (bands: ±1σ, correlated frames)")
            bottom.axhspan(-2, 2, color="0.9", zorder=0)
            bottom.set(xlabel="r (Å)", ylabel="(g − g of the first) / σ")
            bottom.legend(*top.get_legend_handles_labels(), fontsize=7, loc="upper center",
                          bbox_to_anchor=(0.5, -0.45))
        _save(fig, out_dir / "compare_rdf.png")
        written.append("compare_rdf.png")
    if edges is not None and hists:
        fig, ax = plt.subplots(figsize=(6.5, 3.8 + 0.2 * len(hists)))
        centres = 0.5 * (edges[1:] + edges[:-1])
        for k, (label, h) in enumerate(hists.items()):
            ax.step(centres, h["density"], where="mid", color=f"C{k}", lw=1.2,
                    label=f"{label}: ⟨E⟩ = {h['mean']:.5f} ± {h['mean_error']:.5f} eV/atom")
            ax.fill_between(centres, h["density"] - h["error"], h["density"] + h["error"], step="mid",
                            color=f"C{k}", alpha=0.3, lw=0)
        ax.set(xlabel="E_pot (eV/atom)", ylabel="probability density (1/(eV/atom))",
               title="Potential energy distribution (bands: ±1σ)")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18))
        _save(fig, out_dir / "compare_epot.png")
        written.append("compare_epot.png")
    return written
