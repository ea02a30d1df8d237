"""A run directory: trial log, chain and dataset trajectories, model versions, checkpoint.

The checkpoint records the byte length of each append-only file at the moment it was written;
``--resume`` truncates the files back to those lengths, so the log, the dataset and the chain
never disagree with the checkpoint after a crash. The checkpoint itself is replaced atomically
(write, fsync, rename).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

APPEND_FILES = {"trials": "trials.jsonl", "chain": "chain.extxyz", "dataset": "dataset.extxyz",
                "metrics": "models/metrics.jsonl"}
CHECKPOINT = "checkpoint.json"
EXTXYZ_FLOAT_FORMAT = "%16.8f"  # ase.io.extxyz's format for per-atom float columns


class RunDirectoryError(RuntimeError):
    pass


class RunFiles:
    def __init__(self, out_dir: str | Path, resume: bool) -> None:
        self.dir = Path(out_dir)
        self.models = self.dir / "models"
        if resume:
            if not (self.dir / CHECKPOINT).exists():
                raise RunDirectoryError(f"--resume: no {CHECKPOINT} in {self.dir}; start a new run instead")
        elif any((self.dir / name).exists() for name in (*APPEND_FILES.values(), CHECKPOINT)):
            raise RunDirectoryError(
                f"{self.dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        self.models.mkdir(parents=True, exist_ok=True)
        self.checkpoint: dict | None = None
        if resume:
            self.checkpoint = json.loads((self.dir / CHECKPOINT).read_text())
            for key, name in APPEND_FILES.items():
                path = self.dir / name
                path.touch()
                os.truncate(path, self.checkpoint["offsets"][key])
        self._files = {key: open(self.dir / name, "a") for key, name in APPEND_FILES.items()}

    def offsets(self) -> dict[str, int]:
        for f in self._files.values():
            f.flush()
        return {key: f.tell() for key, f in self._files.items()}

    def write_trial(self, record: dict) -> None:
        self._files["trials"].write(json.dumps(record) + "\n")

    def write_chain(self, atoms: Atoms, energy: float, info: dict) -> None:
        frame = atoms.copy()
        frame.info.update(info)
        frame.calc = SinglePointCalculator(frame, energy=energy)
        write(self._files["chain"], frame, format="extxyz")

    def write_label(self, atoms: Atoms, energy: float, forces: np.ndarray, info: dict) -> Atoms:
        """Append a label; returns it with the values a reader of the file gets back.

        extxyz stores positions and forces as "%16.8f" (the energy and the cell exactly), so the
        label is rounded the same way here, without parsing the text back (1.5 ms a label).
        tests/test_outputs.py checks this equals ase.io.read of the file.
        """
        frame = atoms.copy()
        frame.info.update(info)
        frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
        write(self._files["dataset"], frame, format="extxyz")
        stored = frame.copy()
        stored.positions = as_stored(frame.positions)
        stored.calc = SinglePointCalculator(stored, energy=energy, forces=as_stored(np.asarray(forces)))
        return stored

    def read_dataset(self) -> list[Atoms]:
        self._files["dataset"].flush()
        path = self.dir / APPEND_FILES["dataset"]
        return read(path, index=":", format="extxyz") if path.stat().st_size else []

    def model_path(self, version: int) -> Path:
        return self.models / f"model_{version:04d}.safetensors"

    def save_model(self, version: int, data: bytes, metrics: dict) -> None:
        atomic_write(self.model_path(version), data)
        self._files["metrics"].write(json.dumps({"version": version, **metrics}) + "\n")

    def save_checkpoint(self, state: dict) -> None:
        state = {**state, "offsets": self.offsets()}
        for f in self._files.values():
            os.fsync(f.fileno())
        atomic_write(self.dir / CHECKPOINT, json.dumps(state).encode())

    def close(self) -> None:
        for f in self._files.values():
            f.close()


def as_stored(values: np.ndarray) -> np.ndarray:
    """Floats as extxyz writes per-atom columns ("%16.8f") and reads them back."""
    return np.char.mod(EXTXYZ_FLOAT_FORMAT, np.asarray(values, dtype=np.float64)).astype(np.float64)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
