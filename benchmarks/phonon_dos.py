"""The README's phonon example: a network trained by SLHMC at 900 K, production MD at a low and a
high temperature, and the VACF phonon DOS of both against the harmonic DOS of the same network.

    slhmc run examples/cu32_emt/config_900K.toml --out runs/cu32_900K        # train (hot)
    python benchmarks/phonon_dos.py runs/cu32_900K [--low 100] [--high 900]   # MD, DOS, plot

It runs `slhmc md` (the library function behind it) on Cu108 at both temperatures, computes the
harmonic modes of the same cell with ase.phonons and the network (finite displacements) and the
harmonic DOS on a fine q-grid from the primitive cell, prints the VACF peaks, their distance to
the nearest harmonic mode, and writes docs/phonon_dos.png with all curves on one plot.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.io import write

from slhmc.analysis.md import md_spectra
from slhmc.md import run_md
from slhmc.potential import load_calculator
from slhmc.spectra import gamma_frequencies_THz, harmonic_dos, peaks_THz, smooth

ROOT = Path(__file__).parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="an SLHMC run (its newest model is used)")
    p.add_argument("--low", type=float, default=100.0, help="K")
    p.add_argument("--high", type=float, default=900.0, help="K")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--timestep", type=float, default=4.0, help="fs")
    p.add_argument("--out", default=str(ROOT / "runs" / "phonons"))
    p.add_argument("--plot", default=str(ROOT / "docs" / "phonon_dos.png"))
    args = p.parse_args()

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cell = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    write(out / "cu108.xyz", cell)
    calc = load_calculator(args.run_dir, device="cpu")
    modes = gamma_frequencies_THz(cell, calc)[3:]
    fine = harmonic_dos(bulk("Cu", "fcc", a=3.61), calc, supercell=(4, 4, 4), kpts=24)
    curves = {}
    for T in (args.low, args.high):
        md_dir = run_md(args.run_dir, str(out / "cu108.xyz"), T, args.steps, args.timestep, str(out / f"md_{T:.0f}K"),
                        ensemble="nve", repeats=1, equilibrate=500, stride=1, progress=False, device="cpu")
        _, dos, _ = md_spectra(md_dir)
        nu = dos["nu_THz"]
        g = smooth(dos["total"], nu, 0.12)
        peaks = peaks_THz(nu, g, rel=0.3)
        deviation = [float(np.min(np.abs(pk - modes)) / pk) for pk in peaks]
        curves[T] = (nu, g)
        print(f"{T:5.0f} K: VACF peaks {np.round(peaks, 2)} THz; largest distance to a harmonic mode "
              f"{100 * max(deviation):.1f} %; mean frequency {np.trapezoid(nu * g, nu):.3f} THz")
    print(f"harmonic modes of Cu108 (THz): {np.unique(np.round(modes, 1))}")
    mean_harmonic = np.trapezoid(fine["nu_THz"] * fine["total"], fine["nu_THz"])
    print(f"harmonic mean frequency (fine q-grid) {mean_harmonic:.3f} THz")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.fill_between(fine["nu_THz"], fine["total"], color="0.85", label="harmonic (ase.phonons, same network)")
    for T, (nu, g) in curves.items():
        ax.plot(nu, g, lw=1.4, label=f"VACF, ML-MD at {T:.0f} K")
    ax.set(xlim=(0, 10), xlabel="frequency (THz)", ylabel="DOS (1/THz)",
           title="Cu phonon DOS from the SLHMC-trained network")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=130)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
