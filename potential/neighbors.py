"""Periodic neighbour pairs for the descriptor.

vesin (a small, well-kept C++ library with Python bindings) is used because it returns the same
pairs as ``ase.neighborlist.neighbor_list`` (tests/test_potential.py) in a fraction of its time, handles cells
shorter than twice the cutoff (several images of one atom), mixed periodicity and positions
outside the cell. It gives integer image shifts ``S``; the distance vectors are then rebuilt in
torch as ``D = r[j] - r[i] + S @ cell`` so that autograd sees positions and cell.

ASE's ``primitive_neighbor_list`` is the fallback for what vesin refuses (e.g. a degenerate cell
vector along a periodic direction is an error in both; a zero cell along a non-periodic one is not).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def neighbor_pairs(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list (both i->j and j->i) within ``cutoff`` (Å).

    Returns ``i``, ``j`` (int64, shape (P,)) and integer cell shifts ``S`` (int64, shape (P, 3)),
    such that the vector from atom i to the neighbour is ``r[j] - r[i] + S @ cell``.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    pbc_list = [bool(p) for p in np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))]
    box = cell.copy()
    if not any(pbc_list) and not np.any(box):
        box = np.zeros((3, 3))
    try:
        from vesin import NeighborList

        i, j, S = NeighborList(cutoff=float(cutoff), full_list=True).compute(
            points=positions, box=box, periodic=pbc_list, quantities="ijS"
        )
    except Exception as err:  # vesin refuses some cells; ASE handles the rest
        log.debug("vesin failed (%s); using ASE's neighbour list", err)
        from ase.neighborlist import primitive_neighbor_list

        i, j, S = primitive_neighbor_list(
            "ijS", pbc_list, cell, positions, float(cutoff), self_interaction=False
        )
    return (
        np.asarray(i, dtype=np.int64),
        np.asarray(j, dtype=np.int64),
        np.asarray(S, dtype=np.int64).reshape(-1, 3),
    )


class VerletList:
    """Pairs within ``cutoff + skin``, rebuilt only when needed: for MD, where one step moves atoms little.

    The list is rebuilt when the cell, the periodicity or the number of atoms changes, or when any
    atom has moved more than skin/2 since the last build; until then no pair distance can have shrunk
    by more than ``skin``, so every pair within ``cutoff`` is still in the list. Pairs beyond the
    cutoff are in it too: the descriptor gives them exactly zero weight (the cosine cutoff and its
    slope vanish there), so which list is in use does not change the energy function.

    Pairs are sorted by centre atom; ``first[i]:first[i + 1]`` are the pairs of atom i.
    """

    def __init__(self, cutoff: float, skin: float) -> None:
        if skin < 0:
            raise ValueError(f"skin must be >= 0, got {skin}")
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.builds = 0  # how often the list was (re)built
        self._ref: np.ndarray | None = None
        self._cell: np.ndarray | None = None
        self._pbc: np.ndarray | None = None
        self.i = self.j = self.shifts = self.first = np.zeros(0, dtype=np.int64)

    def reset(self) -> None:
        """Forget the list: the next ``update`` builds it from the positions it is given."""
        self._ref = None

    def needs_rebuild(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> bool:
        if self._ref is None or self._ref.shape != positions.shape or self.skin == 0:
            return True
        if not (np.array_equal(self._cell, cell) and np.array_equal(self._pbc, pbc)):
            return True
        moved = positions - self._ref
        return float(np.einsum("ij,ij->i", moved, moved).max(initial=0.0)) > (0.5 * self.skin) ** 2

    def update(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> bool:
        """Make the list valid for ``positions``; returns whether it was rebuilt."""
        positions = np.asarray(positions, dtype=np.float64)
        cell = np.asarray(cell, dtype=np.float64)
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
        if not self.needs_rebuild(positions, cell, pbc):
            return False
        i, j, shifts = neighbor_pairs(positions, cell, pbc, self.cutoff + self.skin)
        order = np.argsort(i, kind="stable")
        self.i, self.j, self.shifts = i[order], j[order], np.ascontiguousarray(shifts[order])
        self.first = np.zeros(len(positions) + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.i, minlength=len(positions)), out=self.first[1:])
        self._ref, self._cell, self._pbc = positions.copy(), cell.copy(), pbc.copy()
        self.builds += 1
        return True
