"""An "AIMD" trajectory to set an SLHMC run against: MD with the run's reference calculator itself.

With EMT standing in for DFT (examples/cu32_emt), this is what an AIMD run would be: Langevin MD
(ASE, friction 0.01/fs, the centre of mass held at rest) with the reference forces, from the
config's start structure at its temperature. Every ``--stride``-th step is written to an extxyz
file with its energy and forces, which ``slhmc analyze RUN --compare FILE`` reads like any AIMD
output that ase.io reads (VASP's vasprun.xml or OUTCAR, a .traj, ...).

    python benchmarks/aimd_trajectory.py examples/cu32_emt/config.toml --out runs/aimd_cu32.extxyz
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from ase import units
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from slhmc.config import load_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="an slhmc config with reference.calculator = emt")
    p.add_argument("--out", required=True, help="extxyz file to write")
    p.add_argument("--steps", type=int, default=5000, help="production steps (default %(default)s)")
    p.add_argument("--equilibrate", type=int, default=500, help="steps not written (default %(default)s)")
    p.add_argument("--timestep", type=float, default=4.0, help="fs (default %(default)s)")
    p.add_argument("--stride", type=int, default=5, help="write every N-th step (default %(default)s)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    cfg = load_config(args.config)
    if cfg.reference.calculator != "emt":
        raise SystemExit("this script runs EMT only; for a real AIMD run give its output file to --compare")
    atoms = read(cfg.structure_path)
    atoms.calc = EMT()
    atoms.set_constraint(FixCom())
    rng = np.random.default_rng(args.seed)
    thermalize_momenta(atoms, cfg.system.temperature, rng=rng)
    Stationary(atoms)
    md = Langevin(atoms, args.timestep * units.fs, temperature_K=cfg.system.temperature,
                  friction=0.01 / units.fs, fixcm=False, rng=rng)
    md.run(args.equilibrate)
    t0 = time.perf_counter()
    frames = []

    def keep() -> None:  # a copy with the reference's energy and forces, as an AIMD code writes them
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(frame)

    md.attach(keep, interval=args.stride)
    md.run(args.steps)
    write(args.out, frames, format="extxyz")
    print(f"{len(frames)} frames, {args.steps * args.timestep / 1000:.1f} ps at {cfg.system.temperature:g} K, "
          f"{time.perf_counter() - t0:.0f} s: {args.out}")


if __name__ == "__main__":
    main()
