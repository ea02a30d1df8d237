"""``slhmc train``: a network fitted on labelled frames from a file, through the real command; a
frame's stress, where it has one, is read and fitted."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from slhmc.potential import load_calculator
from slhmc.train import read_labels
from slhmc.validation import rattled_emt_labels

SLHMC = [sys.executable, "-m", "slhmc"]


def labelled_frames(n: int, seed: int, stress: bool = False) -> list[Atoms]:
    frames = []
    for lab in rattled_emt_labels(n, seed, repeat=(2, 1, 1), rattle_A=0.07, strain=0.015):
        atoms = Atoms(lab.numbers, lab.positions, cell=lab.cell, pbc=lab.pbc)
        extra = {"stress": lab.stress} if stress else {}
        atoms.calc = SinglePointCalculator(atoms, energy=lab.energy, forces=lab.forces, **extra)
        frames.append(atoms)
    return frames


def test_frames_with_and_without_a_stress_are_read(tmp_path):
    write(tmp_path / "s.extxyz", labelled_frames(2, seed=1, stress=True) + labelled_frames(1, seed=2))
    labels = read_labels([tmp_path / "s.extxyz"])
    assert [lab.stress is None for lab in labels] == [False, False, True]
    np.testing.assert_allclose(labels[0].stress, labelled_frames(1, seed=1, stress=True)[0].get_stress(), atol=1e-12)


def test_slhmc_train_fits_frames_from_files(tmp_path):
    write(tmp_path / "a.extxyz", labelled_frames(14, seed=1, stress=True))
    write(tmp_path / "b.extxyz", labelled_frames(10, seed=2))
    config = tmp_path / "train.toml"
    config.write_text("[potential]\ncutoff = 4.5\nhidden = [10, 10]\n[training]\nmax_steps = 15\n")
    out = tmp_path / "model.safetensors"
    proc = subprocess.run([*SLHMC, "train", str(config), "--dataset", str(tmp_path / "a.extxyz"),
                           str(tmp_path / "b.extxyz"), "--out", str(out), "--threads", "1", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "24 labels" in proc.stdout and "validation" in proc.stdout
    assert "14 of 24 frames have a stress" in proc.stderr and "validation stress RMSE" in proc.stderr
    held_out = labelled_frames(4, seed=3)
    errors = []
    for atoms in held_out:
        e_ref = atoms.get_potential_energy()
        atoms.calc = load_calculator(out)
        errors.append((atoms.get_potential_energy() - e_ref) / len(atoms))
    assert np.sqrt(np.mean(np.square(errors))) < 0.01  # eV/atom: the untrained network is off by ~1 eV/atom

    # bad input: a config key that does not exist, frames without energies
    config.write_text("[training]\nmax_step = 3\n")
    bad = subprocess.run([*SLHMC, "train", str(config), "--dataset", str(tmp_path / "a.extxyz"), "--out",
                          str(tmp_path / "x.safetensors")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "training.max_step" in bad.stderr
    bare = labelled_frames(2, seed=4)
    for atoms in bare:
        atoms.calc = None
    write(tmp_path / "bare.extxyz", bare)
    config.write_text("")
    bad = subprocess.run([*SLHMC, "train", str(config), "--dataset", str(tmp_path / "bare.extxyz"), "--out",
                          str(tmp_path / "x.safetensors")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "bare.extxyz" in bad.stderr and not (tmp_path / "x.safetensors").exists()
