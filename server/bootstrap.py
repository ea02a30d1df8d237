"""The start of a new run: labels of the start structure and of perturbed, strained copies of it,
on which model 0 is fitted."""

from __future__ import annotations

import numpy as np
from ase import Atoms


def bootstrap_structures(start: Atoms, n: int, displacement: float, strain: float, seed: int) -> list[Atoms]:
    """``n`` copies of ``start``, isotropically strained by up to ±strain (periodic directions)
    and randomly displaced with an rms displacement of ``displacement`` Å per atom."""
    rng = np.random.default_rng([seed, 0x5EED])
    out = []
    for _ in range(n):
        a = start.copy()
        if a.pbc.any():
            a.set_cell(a.cell.array * (1.0 + rng.uniform(-strain, strain)), scale_atoms=True)
        a.positions += rng.normal(0.0, displacement / np.sqrt(3.0), a.positions.shape)
        out.append(a)
    return out


class Bootstrap:
    """Structures being labelled; their labels are added in structure order once all are in (so
    label ids do not depend on which DFT worker answered first)."""

    def __init__(self, structures: list[Atoms]) -> None:
        self.structures = structures
        self.results: dict[int, dict] = {}

    def add(self, index: int, label: dict) -> bool:
        """Record the label of structure ``index``; True when every structure is labelled."""
        self.results[index] = label
        return len(self.results) == len(self.structures)

    def labelled(self) -> list[tuple[Atoms, dict]]:
        return [(self.structures[k], self.results[k]) for k in range(len(self.structures))]
