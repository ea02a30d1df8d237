"""Production MD and its phonon DOS: the VACF spectrum at low temperature sits on the harmonic
modes that ase.phonons finds with the same potential; `slhmc md` and `slhmc analyze` end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from slhmc.config import PotentialConfig, TrainingConfig, trainer_settings
from slhmc.potential.descriptors import DescriptorSpec
from slhmc.potential.network import BPNN
from slhmc.potential.serialization import save_model
from slhmc.potential.training import featurize, fit
from slhmc.spectra import gamma_frequencies_THz, peaks_THz, smooth, vacf_dos

from .runs import emt_labels, env


def nve_spectrum(atoms, calc, temperature_K: float, repeats: int, steps: int, dt_fs: float = 4.0) -> tuple:
    curves = []
    for r in range(repeats):
        a = atoms.copy()
        a.calc = calc
        rng = np.random.default_rng(r)
        thermalize_momenta(a, temperature_K, rng=rng)
        Stationary(a)
        Langevin(a, dt_fs * units.fs, temperature_K=temperature_K, friction=0.01 / units.fs, fixcm=False,
                 rng=rng).run(200)
        dyn = VelocityVerlet(a, dt_fs * units.fs)
        velocities = []
        for _ in range(steps):
            dyn.run(1)
            velocities.append(a.get_velocities())
        d = vacf_dos(np.array(velocities), a.get_masses(), a.numbers, dt_fs)
        curves.append(d["total"])
    return d["nu_THz"], smooth(np.mean(curves, axis=0), d["nu_THz"], 0.08)


def test_low_temperature_vacf_dos_sits_on_the_harmonic_modes():
    """Cu32 with EMT at 10 K: every VACF peak (above 20 % of the highest) lies within 3 % of a
    harmonic mode of the same cell from ase.phonons (finite displacements, an independent route).
    At 1000 K anharmonicity moves peaks by more, which the same check would flag."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    modes = gamma_frequencies_THz(atoms, EMT())[3:]  # drop the three translations
    nu, g = nve_spectrum(atoms, EMT(), 10.0, repeats=2, steps=2000)
    peaks = peaks_THz(nu, g)
    assert len(peaks) >= 3
    deviation = [float(np.min(np.abs(p - modes)) / p) for p in peaks]
    print("harmonic modes (THz):", np.unique(np.round(modes, 2)), "VACF peaks:", np.round(peaks, 2),
          "max relative deviation:", round(max(deviation), 4))
    assert max(deviation) < 0.03


def test_slhmc_md_and_its_analysis(tmp_path):
    torch_model = BPNN(DescriptorSpec.default([29], cutoff=4.5, n_radial=6), hidden=(10, 10), activation="tanh")
    fit(torch_model, [featurize(torch_model, lab) for lab in emt_labels(16, seed=4)],
        trainer_settings(PotentialConfig(), TrainingConfig(max_steps=10), seed=1)[0], warm_start=False)
    save_model(tmp_path / "model.safetensors", torch_model, {"version": 0})
    write(tmp_path / "cu8.xyz", bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1)))
    out = tmp_path / "md"
    cmd = [sys.executable, "-m", "slhmc", "md", str(tmp_path / "model.safetensors"), "--structure",
           str(tmp_path / "cu8.xyz"), "--temperature", "300", "--steps", "200", "--timestep", "2", "--repeats", "2",
           "--equilibrate", "50", "--stride", "2", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in (0, 1):
        lines = (out / f"repeat_{r}" / "energies.csv").read_text().splitlines()
        assert len(lines) == 1 + 101 and lines[0].startswith("step,time_fs,e_pot_eV")
        assert lines[0].endswith(",extrapolating_atoms")  # a stable column (empty if the model has no range)
    assert len(json.loads((out / "md.json").read_text())["extrapolation"]["repeats"]) == 2
    again = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already holds" in again.stderr  # nothing overwritten

    proc = subprocess.run([sys.executable, "-m", "slhmc", "analyze", str(out)], env=env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "md" and summary["frames"] == 202 and 150 < summary["temperature_mean_K"] < 450
    data = np.loadtxt(out / "dos.txt")
    assert data.shape[1] == 4  # nu, meV, total, Cu
    assert abs(np.trapezoid(data[:, 2], data[:, 0]) - 1.0) < 0.05
    for name in ("dos.png", "rdf.png", "msd.png"):  # what README promises for an md directory
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    # the centre of mass is at rest (thermalisation, FixCom) and the VACF removes what is left: without
    # both, a drift of weight ~1/N sits at 0 THz (for these 8 atoms it was the highest point of the DOS)
    assert data[0, 0] == 0.0 and data[0, 2] < 0.05 * data[:, 2].max()
    frames = read(out / "repeat_0" / "trajectory.extxyz", index=":")
    # total momentum in ASE units, where one atom's components are ~0.8
    assert max(np.abs(a.get_momenta().sum(axis=0)).max() for a in frames) < 1e-6
    row = (out / "repeat_0" / "energies.csv").read_text().splitlines()[-1].split(",")
    assert float(row[5]) == pytest.approx(2 * float(row[3]) / ((3 * 8 - 3) * units.kB))  # T over 3N - 3 dof
    # the frequency grid is what the run length allows (1/T, T = 101 frames × 4 fs), and dos.txt says so
    assert summary["dos_resolution_THz"] == pytest.approx(1e3 / (101 * 4.0))
    assert summary["dos_smoothing_THz"] is None and "frequency resolution 1/T = 2.48 THz" in \
        (out / "dos.txt").read_text().splitlines()[0]
