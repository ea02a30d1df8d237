"""Periodic neighbour pairs for the descriptor.

vesin (a small, well-kept C++ library with Python bindings) is used because it returns the same
pairs as ``ase.neighborlist.neighbor_list`` 10-60x faster (see shared FIELD-NOTES), handles cells
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
