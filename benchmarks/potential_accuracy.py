"""Held-out accuracy of a run's newest model against the reference, on an independent trajectory.

The held-out structures come from a Langevin MD run with the reference calculator itself (EMT by
default) at the run's temperature, started from the run's start structure with its own seed, so
they share nothing with the SLHMC chain that produced the training labels.

    python benchmarks/potential_accuracy.py runs/cu32 [--frames 100] [--stride 20]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import units
from ase.calculators.emt import EMT
from ase.io import read
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

from slhmc.config import load_config
from slhmc.potential import load_calculator


def held_out(start, temperature_K: float, frames: int, stride: int, seed: int) -> list:
    atoms = start.copy()
    atoms.calc = EMT()
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K, rng=rng)
    md = Langevin(atoms, 2.0 * units.fs, temperature_K=temperature_K, friction=0.02, fixcm=False, rng=rng)
    md.run(500)  # equilibrate
    out = []
    for _ in range(frames):
        md.run(stride)
        frame = atoms.copy()
        frame.info["energy"] = atoms.get_potential_energy()
        frame.arrays["ref_forces"] = atoms.get_forces()
        out.append(frame)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--config", default=None, help="the run's config (default: the example's)")
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--stride", type=int, default=20, help="MD steps of 2 fs between held-out frames")
    p.add_argument("--seed", type=int, default=12345)
    args = p.parse_args()
    config = load_config(args.config or Path(__file__).parents[1] / "examples/cu32_emt/config.toml")
    start = read(config.structure_path)
    frames = held_out(start, config.system.temperature, args.frames, args.stride, args.seed)
    calc = load_calculator(args.run_dir, device="cpu")
    de, df = [], []
    for f in frames:
        a = f.copy()
        a.calc = calc
        de.append((a.get_potential_energy() - f.info["energy"]) / len(a))
        df.append(a.get_forces() - f.arrays["ref_forces"])
    e_rmse = 1e3 * float(np.sqrt(np.mean(np.square(de))))
    f_rmse = 1e3 * float(np.sqrt(np.mean(np.square(np.concatenate(df)))))
    f_scale = 1e3 * float(np.sqrt(np.mean(np.square(np.concatenate([f.arrays["ref_forces"] for f in frames])))))
    n_labels = len(read(Path(args.run_dir) / "dataset.extxyz", index=":"))
    print(f"model {calc.info.get('version')} of {args.run_dir} ({n_labels} labels); {len(frames)} held-out "
          f"frames from {config.system.temperature:.0f} K Langevin MD with the reference")
    print(f"energy RMSE {e_rmse:.3f} meV/atom, force RMSE {f_rmse:.1f} meV/Å (rms reference force {f_scale:.0f} meV/Å)")


if __name__ == "__main__":
    main()
