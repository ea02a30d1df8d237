"""``slhmc md``: production molecular dynamics with a trained potential, through ASE's integrators.

Each repeat equilibrates with Langevin at the target temperature (its own seed), then runs the
production ensemble: ``nve`` (velocity Verlet: the right dynamics for vibrational spectra) or
``nvt`` (Langevin). Every ``stride`` steps the frame (positions and momenta) goes to
``repeat_K/trajectory.extxyz`` and the energies to ``repeat_K/energies.csv``; ``md.json`` says
what was run, so that ``slhmc analyze DIR`` knows it is an MD directory.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
from ase import units
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from tqdm import tqdm

from slhmc.potential import load_calculator

log = logging.getLogger(__name__)

LANGEVIN_FRICTION_PER_FS = 0.01  # weak: 100-fs velocity memory


def run_md(
    model: str,
    structure: str,
    temperature_K: float,
    steps: int,
    timestep_fs: float,
    out: str,
    ensemble: str = "nve",
    repeats: int = 1,
    equilibrate: int = 1000,
    stride: int = 5,
    seed: int = 0,
    progress: bool = True,
    device: str | None = None,
) -> Path:
    if ensemble not in ("nve", "nvt"):
        raise ValueError(f"ensemble must be nve or nvt, got {ensemble!r}")
    out_dir = Path(out)
    if (out_dir / "md.json").exists():
        raise FileExistsError(f"{out_dir} already holds an MD run; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    calc = load_calculator(model, device=device)
    start = read(structure)
    meta = {"kind": "md", "model": str(model), "model_version": calc.info.get("version"), "structure": str(structure),
            "temperature_K": temperature_K, "steps": steps, "timestep_fs": timestep_fs, "ensemble": ensemble,
            "repeats": repeats, "equilibrate": equilibrate, "stride": stride, "seed": seed}
    (out_dir / "md.json").write_text(json.dumps(meta, indent=2))
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        atoms = start.copy()
        atoms.calc = calc
        thermalize_momenta(atoms, temperature_K, rng=rng)
        Stationary(atoms)  # no centre-of-mass drift
        dt = timestep_fs * units.fs
        thermostat = Langevin(atoms, dt, temperature_K=temperature_K, friction=LANGEVIN_FRICTION_PER_FS / units.fs,
                              fixcm=False, rng=rng)
        total = equilibrate + steps
        bar = tqdm(total=total, desc=f"MD {r + 1}/{repeats}", unit="step", disable=not progress, dynamic_ncols=True)
        for _ in range(equilibrate // 50):
            thermostat.run(50)
            bar.update(50)
        thermostat.run(equilibrate % 50)
        bar.update(equilibrate % 50)
        dyn = VelocityVerlet(atoms, dt) if ensemble == "nve" else thermostat
        rep_dir = out_dir / f"repeat_{r}"
        rep_dir.mkdir(exist_ok=True)
        traj_path = rep_dir / "trajectory.extxyz"
        with open(rep_dir / "energies.csv", "w", newline="") as f:
            table = csv.writer(f)
            table.writerow(["step", "time_fs", "e_pot_eV", "e_kin_eV", "e_tot_eV", "temperature_K"])
            for k in range(steps // stride + 1):
                if k:
                    dyn.run(stride)
                    bar.update(stride)
                e_pot, e_kin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
                table.writerow([k * stride, k * stride * timestep_fs, e_pot, e_kin, e_pot + e_kin,
                                atoms.get_temperature()])
                write(traj_path, atoms, format="extxyz", append=True)
        bar.close()
        log.info("repeat %d done: %s", r, traj_path)
    return out_dir
