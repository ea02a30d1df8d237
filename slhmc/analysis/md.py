"""Analysis of an ``slhmc md`` directory: the phonon DOS from the velocities (slhmc.spectra),
where the network extrapolated (md.json), energies, temperature, g(r) and MSD.

Writes ``dos.txt`` (the DOS per element and total), ``rdf.json``, ``summary.json`` and PNG plots
(dos.png, rdf.png, msd.png) into the directory and prints a short summary. The DOS is as fine as
the run is long: its grid is 1/T for a repeat of length T (1 THz for 1 ps); it is smoothed
(Gaussian, σ = ``SMOOTHING_THZ``) only where that grid is finer than the smoothing, and the
resolution is stated in dos.txt, on dos.png, in the printout and in summary.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from ase import Atoms

from slhmc.rundir import (
    DOS,
    RDF,
    SUMMARY,
    TRAJECTORY,
    flagged_repeats,
    read_frames,
    read_md_energies,
    read_md_meta,
    repeat_dirs,
)
from slhmc.spectra import EV_PER_THZ, peak_THz, smooth, vacf_dos

from . import plots as plotting
from .structure import msd, rdf

MIN_FRAMES = 16  # a repeat with fewer frames gives no usable spectrum
SMOOTHING_THZ = 0.1  # Gaussian width (σ) of the DOS written and plotted, where the frequency grid is finer
RDF_FRAMES = 200  # about this many frames are plenty for g(r)


def repeat_frames(md_dir: Path) -> list[list[Atoms]]:
    """The complete frames of each repeat's trajectory.extxyz, repeat after repeat."""
    return [read_frames(rep / TRAJECTORY) for rep in repeat_dirs(md_dir)]


def _spectra(meta: dict, repeats: list[list[Atoms]]) -> dict:
    """Repeat-averaged VACF DOS of the repeats with at least ``MIN_FRAMES`` frames ({} if none),
    plus ``resolution_THz``: 1/T of the shortest of them, whose grid the others are interpolated
    onto (repeats differ in length when one was stopped early)."""
    dt_fs = meta["stride"] * meta["timestep_fs"]
    curves = [vacf_dos(np.array([a.get_velocities() for a in frames]), frames[0].get_masses(), frames[0].numbers,
                       dt_fs) for frames in repeats if len(frames) >= MIN_FRAMES]
    if not curves:
        return {}
    nu = min((c["nu_THz"] for c in curves), key=len)  # the coarsest grid, 1/T of the shortest repeat
    dos = {k: np.mean([np.interp(nu, c["nu_THz"], c[k]) for c in curves], axis=0)
           for k in curves[0] if k != "nu_THz"}
    dos = {k: g / np.trapezoid(g, nu) if np.trapezoid(g, nu) > 0 else g for k, g in dos.items()}
    return {"nu_THz": nu, **dos, "resolution_THz": float(nu[1] - nu[0])}


def md_spectra(md_dir: Path) -> tuple[dict, dict, list[Atoms]]:
    """Metadata (md.json), repeat-averaged VACF DOS (``nu_THz`` and curves in 1/THz, centre-of-mass
    motion removed, on the frequency grid 1/T of the shortest repeat; {} when no repeat has
    ``MIN_FRAMES`` frames yet) and the frames of those repeats, repeat after repeat."""
    meta = read_md_meta(md_dir)
    repeats = [frames for frames in repeat_frames(md_dir) if len(frames) >= MIN_FRAMES]
    dos = _spectra(meta, repeats)
    dos.pop("resolution_THz", None)
    return meta, dos, [a for frames in repeats for a in frames]


def extrapolation_lines(md_dir: Path, meta: dict) -> list[str]:
    """One line per repeat in which the network extrapolated: first step, steps flagged, stopped."""
    return [f"{md_dir}: repeat {rec['repeat']}: the network extrapolated first at step {rec['first_step']} "
            f"({rec['flagged_steps']} of {rec['checked_steps']} steps flagged"
            f"{', repeat stopped there' if rec.get('stopped') else ''})" for rec in flagged_repeats(meta)]


def com_at_rest(frames: list[Atoms]) -> bool:
    """Whether the total momentum is zero (to 10⁻⁶ of the atoms' own) in every frame: written by an
    ``slhmc md`` that holds the centre of mass, whose T then counts 3N − 3 degrees of freedom."""
    p = np.array([a.get_momenta() for a in frames])  # (frames, atoms, 3)
    return bool(np.abs(p.sum(axis=1)).max() <= 1e-6 * np.abs(p).sum(axis=1).max())


def resolution_text(resolution: float, smoothing: float | None) -> str:
    """How fine the DOS is: the grid 1/T (THz) set by the run length, and the smoothing if any."""
    text = f"frequency resolution 1/T = {resolution:.3g} THz (T = {1 / resolution:.3g} ps, the length of a repeat)"
    return text + (f", Gaussian-smoothed σ = {smoothing:g} THz" if smoothing else ", not smoothed")


def write_dos(path: Path, nu: np.ndarray, dos: dict[str, np.ndarray], resolution: str) -> None:
    """dos.txt: frequency (THz), energy (meV), then one column per curve of ``dos`` (1/THz);
    ``resolution``: :func:`resolution_text`, for the header."""
    with open(path, "w") as f:
        f.write(f"# VACF phonon DOS, normalised to unit area (1/THz), centre-of-mass motion removed; {resolution}\n")
        f.write("# nu_THz  energy_meV  " + "  ".join(dos) + "\n")
        for i in range(len(nu)):
            values = " ".join(f"{g[i]:.6e}" for g in dos.values())
            f.write(f"{nu[i]:.5f} {1e3 * nu[i] * EV_PER_THZ:.5f} {values}\n")


def analyze_md(md_dir: str | Path, plots: bool = True) -> int:
    """``slhmc analyze`` on an ``slhmc md`` directory: prints where the network extrapolated and a
    summary; writes dos.txt, rdf.json, summary.json and (``plots``) the PNG files. Returns 1 while
    no repeat has enough frames, else 0."""
    md_dir = Path(md_dir)
    meta = read_md_meta(md_dir)
    repeats = [frames for frames in repeat_frames(md_dir) if len(frames) >= MIN_FRAMES]
    dos = _spectra(meta, repeats)
    for line in extrapolation_lines(md_dir, meta):
        print(line)
    if not dos:
        print(f"{md_dir}: no repeat with enough frames yet")
        return 1
    nu, resolution = dos.pop("nu_THz"), dos.pop("resolution_THz")
    # smoothing narrower than the grid would change nothing, and claiming it would overstate the resolution
    smoothing = SMOOTHING_THZ if SMOOTHING_THZ > resolution else None
    curves = {k: smooth(v, nu, smoothing) for k, v in dos.items()} if smoothing else dos
    resolution_line = resolution_text(resolution, smoothing)
    write_dos(md_dir / DOS, nu, curves, resolution_line)
    frames = [a for rep in repeats for a in rep]
    energies = read_md_energies(md_dir)
    e_pot = np.array([float(r["e_pot_eV"]) for r in energies]) / len(frames[0])
    temps = np.array([float(r["temperature_K"]) for r in energies])
    rdf_data = rdf(frames[:: max(1, len(frames) // RDF_FRAMES)])
    dt_fs = meta["stride"] * meta["timestep_fs"]
    msd_data = msd(repeats[0])  # from the first repeat's start
    summary = {"kind": "md", **meta, "frames": len(frames), "e_pot_eV_per_atom": float(e_pot.mean()),
               "temperature_mean_K": float(temps.mean()), "dos_peak_THz": peak_THz(nu, curves["total"]),
               "dos_resolution_THz": resolution, "dos_smoothing_THz": smoothing,
               "msd_final_A2": float(msd_data[-1]) if len(msd_data) else None}
    (md_dir / RDF).write_text(json.dumps(rdf_data))
    written = (plotting.plot_md(md_dir, nu, curves, summary["dos_peak_THz"], meta["temperature_K"], rdf_data,
                                msd_data, dt_fs, resolution_line) if plots else [])
    summary["plots"] = written
    (md_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
    dof = " (3N-3 degrees of freedom: the centre of mass is at rest)" if com_at_rest(frames) else ""
    print(f"{md_dir}: {meta['repeats']} repeat(s), {len(frames)} frames, <T> = {summary['temperature_mean_K']:.1f} K"
          f"{dof}, <E_pot> = {summary['e_pot_eV_per_atom']:.5f} eV/atom, DOS peak {summary['dos_peak_THz']:.2f} THz")
    print(f"DOS {resolution_line}")
    print(f"data: {md_dir / DOS}; plots: {', '.join(written)}")
    return 0
