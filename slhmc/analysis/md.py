"""Analysis of an ``slhmc md`` directory: the phonon DOS from the velocities (slhmc.spectra),
where the network extrapolated (md.json), energies, temperature, g(r) and MSD.

Writes ``dos.txt`` (the smoothed DOS per element and total), ``rdf.json``, ``summary.json`` and
PNG plots into the directory and prints a short summary.
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
SMOOTHING_THZ = 0.1  # Gaussian width of the DOS written and plotted
RDF_FRAMES = 200  # about this many frames are plenty for g(r)


def md_spectra(md_dir: Path) -> tuple[dict, dict, list[Atoms]]:
    """Metadata (md.json), repeat-averaged VACF DOS (``nu_THz`` and curves in 1/THz; {} when no
    repeat has ``MIN_FRAMES`` frames yet) and the frames of those repeats, repeat after repeat."""
    meta = read_md_meta(md_dir)
    dt_fs = meta["stride"] * meta["timestep_fs"]
    curves, frames_all = [], []
    for rep in repeat_dirs(md_dir):
        frames = read_frames(rep / TRAJECTORY)
        if len(frames) < MIN_FRAMES:
            continue
        velocities = np.array([a.get_velocities() for a in frames])
        curves.append(vacf_dos(velocities, frames[0].get_masses(), frames[0].numbers, dt_fs))
        frames_all.extend(frames)
    if not curves:
        return meta, {}, frames_all
    n = min(len(c["nu_THz"]) for c in curves)  # repeats of different length: common grid prefix
    dos = {k: np.mean([c[k][:n] for c in curves], axis=0) for k in curves[0] if k != "nu_THz"}
    dos["nu_THz"] = curves[0]["nu_THz"][:n]
    return meta, dos, frames_all


def extrapolation_lines(md_dir: Path, meta: dict) -> list[str]:
    """One line per repeat in which the network extrapolated: first step, steps flagged, stopped."""
    return [f"{md_dir}: repeat {rec['repeat']}: the network extrapolated first at step {rec['first_step']} "
            f"({rec['flagged_steps']} of {rec['checked_steps']} steps flagged"
            f"{', repeat stopped there' if rec.get('stopped') else ''})" for rec in flagged_repeats(meta)]


def write_dos(path: Path, nu: np.ndarray, dos: dict[str, np.ndarray]) -> None:
    """dos.txt: frequency (THz), energy (meV), then one column per curve of ``dos`` (1/THz)."""
    with open(path, "w") as f:
        f.write(f"# VACF phonon DOS, normalised to unit area (1/THz), Gaussian-smoothed {SMOOTHING_THZ:g} THz\n")
        f.write("# nu_THz  energy_meV  " + "  ".join(dos) + "\n")
        for i in range(len(nu)):
            values = " ".join(f"{g[i]:.6e}" for g in dos.values())
            f.write(f"{nu[i]:.5f} {1e3 * nu[i] * EV_PER_THZ:.5f} {values}\n")


def analyze_md(md_dir: str | Path, plots: bool = True) -> int:
    """``slhmc analyze`` on an ``slhmc md`` directory: prints where the network extrapolated and a
    summary; writes dos.txt, rdf.json, summary.json and (``plots``) the PNG files. Returns 1 while
    no repeat has enough frames, else 0."""
    md_dir = Path(md_dir)
    meta, dos, frames = md_spectra(md_dir)
    for line in extrapolation_lines(md_dir, meta):
        print(line)
    if not dos:
        print(f"{md_dir}: no repeat with enough frames yet")
        return 1
    nu = dos["nu_THz"]
    smoothed = {k: smooth(v, nu, SMOOTHING_THZ) for k, v in dos.items() if k != "nu_THz"}
    write_dos(md_dir / DOS, nu, smoothed)
    energies = read_md_energies(md_dir)
    e_pot = np.array([float(r["e_pot_eV"]) for r in energies]) / len(frames[0])
    temps = np.array([float(r["temperature_K"]) for r in energies])
    rdf_data = rdf(frames[:: max(1, len(frames) // RDF_FRAMES)])
    msd_data = msd(frames[: len(frames) // max(1, len(repeat_dirs(md_dir)))])  # the first repeat's frames
    summary = {"kind": "md", **meta, "frames": len(frames), "e_pot_eV_per_atom": float(e_pot.mean()),
               "temperature_mean_K": float(temps.mean()), "dos_peak_THz": peak_THz(nu, smoothed["total"]),
               "msd_final_A2": float(msd_data[-1]) if len(msd_data) else None}
    (md_dir / RDF).write_text(json.dumps(rdf_data))
    written = (plotting.plot_md(md_dir, nu, smoothed, summary["dos_peak_THz"], meta["temperature_K"], rdf_data)
               if plots else [])
    summary["plots"] = written
    (md_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
    print(f"{md_dir}: {meta['repeats']} repeat(s), {len(frames)} frames, <T> = {summary['temperature_mean_K']:.1f} K, "
          f"<E_pot> = {summary['e_pot_eV_per_atom']:.5f} eV/atom, DOS peak {summary['dos_peak_THz']:.2f} THz")
    print(f"data: {md_dir / DOS}; plots: {', '.join(written)}")
    return 0
