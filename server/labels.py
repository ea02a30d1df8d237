"""The run's labels as the server holds them: written to dataset.extxyz, kept in wire form for the
trainers, and sent to each trainer in order (the server's record of what each one holds)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from ase import Atoms

from slhmc.potential.training import stored_stress
from slhmc.protocol import structure_fields

from .outputs import RunFiles

LABEL_CHUNK = 100  # labels per message to the trainer


def wire_label(frame: Atoms) -> dict:
    """A dataset frame as the ``labels`` message carries it."""
    return {**structure_fields(frame), "label_id": int(frame.info["label_id"]),
            "energy": float(frame.get_potential_energy()), "forces": frame.get_forces().astype(np.float64),
            "stress": stored_stress(frame)}


class LabelStore:
    def __init__(self, files: RunFiles) -> None:
        self.files = files
        self.labels: list[dict] = []  # wire-form labels; index == label_id
        self.chain_ids: list[int] = []  # initial, bootstrap and chain-trial labels (not speculative ones)

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, atoms: Atoms, energy: float, forces: np.ndarray, info: dict, stress: np.ndarray | None = None) -> int:
        """Write one label (``info["source"]`` says what it is; ``stress`` Voigt, eV/Å³, where the
        reference gave one); returns its label id."""
        label_id = len(self.labels)
        if info["source"] != "speculative":
            self.chain_ids.append(label_id)
        # the trainer gets the label exactly as dataset.extxyz holds it (8 decimals), so that a
        # resumed run, which can only read the file, trains on the very same numbers
        stored = self.files.write_label(atoms, energy, forces, {"label_id": label_id, **info}, stress)
        self.labels.append(wire_label(stored))
        return label_id

    def restore(self) -> None:
        """Read the labels back from dataset.extxyz (resume)."""
        frames = self.files.read_dataset()
        self.labels = [wire_label(frame) for frame in frames]
        self.chain_ids = [k for k, f in enumerate(frames) if f.info.get("source") != "speculative"]

    def training_ids(self, deterministic: bool) -> list[int]:
        # speculative labels train only when the chain need not be reproducible: their number
        # depends on how many DFT workers there are
        return list(self.chain_ids) if deterministic else list(range(len(self.labels)))

    def chunks_after(self, sent: int, minimum: int = 1) -> Iterator[tuple[int, list[dict]]]:
        """``labels`` messages for a trainer that holds the first ``sent`` labels: (labels held after
        the chunk, chunk); nothing while fewer than ``minimum`` are missing."""
        if len(self.labels) - sent < minimum:
            return
        while sent < len(self.labels):
            chunk = self.labels[sent : sent + LABEL_CHUNK]
            sent += len(chunk)
            yield sent, chunk
