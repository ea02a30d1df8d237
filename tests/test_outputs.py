"""The run directory: labels are handed to the trainer exactly as dataset.extxyz gives them back,
and --resume truncates the append-only files to the checkpoint."""

from __future__ import annotations

import numpy as np
from ase.build import bulk
from ase.io import read

from slhmc.server.outputs import RunFiles


def test_label_as_stored_equals_what_ase_reads_back(tmp_path):
    files = RunFiles(tmp_path / "run", resume=False)
    rng = np.random.default_rng(0)
    for k in range(5):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
        atoms.positions += rng.normal(0, 0.1, atoms.positions.shape) * 10 ** rng.uniform(-3, 1)
        forces = rng.normal(0, 1, (8, 3)) * 10 ** rng.uniform(-6, 2)
        energy = float(rng.normal(-30, 5))
        stored = files.write_label(atoms, energy, forces, {"label_id": k, "source": "trial"})
        files.save_checkpoint({"trial": k})
        back = read(tmp_path / "run" / "dataset.extxyz", index=k)
        assert np.array_equal(stored.positions, back.positions)
        assert np.array_equal(stored.get_forces(), back.get_forces())
        assert stored.get_potential_energy() == back.get_potential_energy() == energy
        assert np.array_equal(stored.cell.array, back.cell.array)
    files.close()


def test_resume_truncates_to_the_checkpoint(tmp_path):
    files = RunFiles(tmp_path / "run", resume=False)
    files.write_trial({"trial": 0})
    files.save_checkpoint({"trial": 1})
    files.write_trial({"trial": 1})  # written after the checkpoint: a crash would leave it behind
    files.close()
    again = RunFiles(tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "trials.jsonl").read_text() == '{"trial": 0}\n'
    again.close()
