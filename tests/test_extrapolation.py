"""Extrapolation detection: the network knows the range of every symmetry function it was trained
on, flags atoms outside it, the calculator and `slhmc md` report it, and `--on-extrapolation stop`
ends a repeat there. Models written before the range existed still load (and are not checked)."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from slhmc.md import run_md
from slhmc.potential import serialization
from slhmc.potential.calculator import BPNNCalculator
from slhmc.potential.descriptors import DescriptorSpec
from slhmc.potential.network import BPNN
from slhmc.potential.serialization import load_model, model_from_bytes, model_to_bytes, save_model

from .runs import env


def cu32(a: float = 3.61):
    return bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 2, 2))


def emt_frames(temperature_K: float, n: int, seed: int) -> list:
    """Cu32 frames from EMT Langevin MD, 40 fs apart after 400 fs of equilibration."""
    atoms = cu32()
    atoms.calc = EMT()
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K, rng=rng)
    dyn = Langevin(atoms, 4 * units.fs, temperature_K=temperature_K, friction=0.02 / units.fs, fixcm=False, rng=rng)
    dyn.run(100)
    frames = []
    for _ in range(n):
        dyn.run(10)
        frames.append(atoms.copy())
    return frames


def record(model: BPNN, frames: list) -> None:
    """What the fit does with its training set: widen the range to each structure's features."""
    for a in frames:
        species = model.species_index(a.numbers)
        feats = model.features(species, torch.tensor(a.positions), torch.tensor(a.cell.array),
                               model.pairs(a.positions, a.cell.array, a.pbc))
        model.record_feature_range(feats, species)


def flagged(model: BPNN, atoms) -> int | None:
    return model.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc).extrapolating_atoms


@pytest.fixture(scope="module")
def cu_model() -> BPNN:
    """A Cu network whose training range is that of 30 frames of 600 K EMT MD."""
    torch.manual_seed(0)
    model = BPNN(DescriptorSpec.default([29], cutoff=4.5, n_radial=6), hidden=(10, 10), activation="tanh")
    assert not model.has_feature_range() and flagged(model, cu32()) is None  # nothing recorded: no check
    record(model, emt_frames(600.0, 30, seed=1))
    assert model.has_feature_range()
    return model


def test_thermal_frames_inside_the_training_range_are_not_flagged(cu_model):
    """Trained hotter (600 K) than it is used (300 K): no atom of independent 300 K frames is out of range."""
    counts = [flagged(cu_model, a) for a in emt_frames(300.0, 20, seed=2)]
    assert counts == [0] * 20


@pytest.mark.parametrize("lattice_A", [3.61 * 0.95, 3.61 * 1.05])
def test_compressed_and_stretched_crystals_are_flagged(cu_model, lattice_A):
    ev_atoms = cu32(lattice_A)
    ev = cu_model.evaluate(ev_atoms.numbers, ev_atoms.positions, ev_atoms.cell.array, ev_atoms.pbc)
    assert ev.extrapolating_atoms == 32 and ev.extrapolating_per_element == (32,)


def test_one_displaced_atom_flags_itself_and_its_neighbours_only(cu_model):
    atoms = cu32()
    atoms.positions[5] += [0.9, 0.0, 0.0]  # towards a neighbour 1.8 Å away
    mask = cu_model.extrapolating_mask(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    n = flagged(cu_model, atoms)
    assert mask[5] and n == mask.sum() and 1 < n < len(atoms)


def test_range_is_per_element_and_an_untrained_element_extrapolates(cu_alloy):
    model = BPNN(DescriptorSpec.default([28, 29], cutoff=4.5, n_radial=5), hidden=(8, 8), activation="tanh")
    species = model.species_index(cu_alloy.numbers)
    feats = model.features(species, torch.tensor(cu_alloy.positions), torch.tensor(cu_alloy.cell.array),
                           model.pairs(cu_alloy.positions, cu_alloy.cell.array, cu_alloy.pbc))
    cu = species == 1
    model.record_feature_range(feats[cu], species[cu])  # Ni atoms never seen in "training"
    ev = model.evaluate(cu_alloy.numbers, cu_alloy.positions, cu_alloy.cell.array, cu_alloy.pbc)
    assert ev.extrapolating_per_element == (3, 0) and ev.extrapolating_atoms == 3  # elements (Ni, Cu)
    model.record_feature_range(feats, species)  # now both; the range only ever widens
    assert flagged(model, cu_alloy) == 0
    np.testing.assert_array_equal(model.feature_min[1], feats[cu].amin(0))
    model.reset_feature_range()
    assert flagged(model, cu_alloy) is None


def test_calculator_reports_and_counts(cu_model, caplog):
    calc = BPNNCalculator(cu_model)
    atoms = cu32()
    atoms.calc = calc
    atoms.get_potential_energy()
    assert calc.results["extrapolating_atoms"] == 0 and calc.results["extrapolating_per_element"] == {"Cu": 0}
    with caplog.at_level(logging.WARNING, logger="slhmc.potential.calculator"):
        for lattice in (3.3, 3.2):
            atoms.set_cell(cu32(lattice).cell, scale_atoms=True)
            atoms.get_forces()
            assert calc.results["extrapolating_atoms"] == 32
    assert (calc.evaluations, calc.extrapolating_evaluations) == (3, 2)
    assert sum("extrapolates" in r.message for r in caplog.records) == 1  # warned once, not per step
    calc.reset_extrapolation_counter()
    assert (calc.evaluations, calc.extrapolating_evaluations) == (0, 0)


def test_range_round_trips_and_old_model_bytes_still_load(cu_model, caplog):
    again, _ = model_from_bytes(model_to_bytes(cu_model))
    assert torch.equal(again.feature_min, cu_model.feature_min) and torch.equal(again.feature_max, cu_model.feature_max)

    # the bytes an older slhmc wrote: the same file without the two range tensors
    data = model_to_bytes(cu_model, {"version": 7})
    tensors = {k: v for k, v in st_load(data).items() if k not in ("feature_min", "feature_max")}
    n = int.from_bytes(data[:8], "little")
    old = st_save(tensors, metadata=json.loads(data[8 : 8 + n])["__metadata__"])
    serialization._warned_no_range = False
    with caplog.at_level(logging.WARNING, logger="slhmc.potential.serialization"):
        model, info = model_from_bytes(old)
        model_from_bytes(old)
    assert sum("no extrapolation check" in r.message for r in caplog.records) == 1  # said once
    assert info == {"version": 7} and not model.has_feature_range()
    atoms = cu32(3.2)
    ev, ev_new = (m.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc) for m in (model, cu_model))
    assert ev.energy == ev_new.energy and ev.extrapolating_atoms is None and ev_new.extrapolating_atoms == 32

    # but a file that lacks a tensor the network needs is still refused
    broken = st_save({k: v for k, v in tensors.items() if k != "ref_energy"},
                     metadata=json.loads(data[8 : 8 + n])["__metadata__"])
    with pytest.raises(ValueError, match="ref_energy"):
        model_from_bytes(broken)


def test_md_stop_ends_each_repeat_at_the_flagged_step(cu_model, tmp_path):
    """A crystal 10 % compressed is far outside the range: `--on-extrapolation stop` ends each
    repeat at step 0 (no equilibration), keeps what was written and exits with status 3."""
    save_model(tmp_path / "model.safetensors", cu_model, {"version": 4})
    write(tmp_path / "compressed.xyz", cu32(3.61 * 0.9))
    out = tmp_path / "md"
    cmd = [sys.executable, "-m", "slhmc", "md", str(tmp_path / "model.safetensors"), "--structure",
           str(tmp_path / "compressed.xyz"), "--temperature", "300", "--steps", "20", "--timestep", "1",
           "--repeats", "2", "--equilibrate", "0", "--stride", "5", "--out", str(out), "--no-progress",
           "--on-extrapolation", "stop"]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "repeat 0 at step 0, repeat 1 at step 0" in proc.stderr
    assert "extrapolates at step 0" in proc.stderr  # the log line
    meta = json.loads((out / "md.json").read_text())
    for r, rec in enumerate(meta["extrapolation"]["repeats"]):
        assert rec["repeat"] == r and rec["first_step"] == 0 and rec["stopped"] and rec["flagged_steps"] == 1
        with open(out / f"repeat_{r}" / "energies.csv") as f:
            rows = list(csv.DictReader(f))
        assert [row["step"] for row in rows] == ["0"] and rows[0]["extrapolating_atoms"] == "32"
        assert len(read(out / f"repeat_{r}" / "trajectory.extxyz", ":")) == 1
        first = read(out / f"repeat_{r}" / "extrapolation.extxyz")
        assert first.info["step"] == 0 and first.arrays["extrapolating"].all()

    proc = subprocess.run([sys.executable, "-m", "slhmc", "analyze", str(out)], env=env(), capture_output=True,
                          text=True, timeout=300)
    assert "repeat 1: the network extrapolated first at step 0" in proc.stdout, proc.stdout + proc.stderr


def test_md_warn_keeps_going_and_counts_every_step(cu_model, tmp_path):
    """In warn mode (default) the run goes on; equilibration steps are negative; the CSV column is
    the most extrapolating atoms since the previous row, so nothing between rows is lost."""
    save_model(tmp_path / "model.safetensors", cu_model, {"version": 4})
    write(tmp_path / "compressed.xyz", cu32(3.61 * 0.9))
    out = run_md(str(tmp_path / "model.safetensors"), str(tmp_path / "compressed.xyz"), 300.0, steps=6,
                 timestep_fs=1.0, out=str(tmp_path / "md"), ensemble="nvt", equilibrate=3, stride=3, progress=False)
    rec = json.loads((out / "md.json").read_text())["extrapolation"]["repeats"][0]
    assert rec["first_step"] == -3 and not rec["stopped"]
    assert rec["checked_steps"] == rec["flagged_steps"] == 3 + 6 + 1  # start structure + every step
    with open(out / "repeat_0" / "energies.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["0", "3", "6"] and all(int(r["extrapolating_atoms"]) > 0 for r in rows)


def test_md_with_a_model_without_range_leaves_the_column_empty(tmp_path):
    model = BPNN(DescriptorSpec.default([29], cutoff=4.5, n_radial=6), hidden=(10, 10), activation="tanh")
    save_model(tmp_path / "model.safetensors", model)
    write(tmp_path / "cu.xyz", cu32())
    out = run_md(str(tmp_path / "model.safetensors"), str(tmp_path / "cu.xyz"), 300.0, steps=2, timestep_fs=1.0,
                 out=str(tmp_path / "md"), equilibrate=0, stride=1, progress=False, on_extrapolation="stop")
    meta = json.loads((out / "md.json").read_text())
    assert meta["extrapolation"]["checked"] is False and meta["extrapolation"]["repeats"][0]["first_step"] is None
    with open(out / "repeat_0" / "energies.csv") as f:
        assert [r["extrapolating_atoms"] for r in csv.DictReader(f)] == ["", "", ""]


def test_loaded_file_keeps_the_range(cu_model, tmp_path):
    save_model(tmp_path / "m.safetensors", cu_model)
    model, _ = load_model(tmp_path / "m.safetensors")
    assert flagged(model, cu32(3.2)) == 32 and flagged(model, cu32()) == 0
