"""Structural observables of a sequence of frames (chain states or MD snapshots): the radial
distribution function per element pair and the mean square displacement."""

from __future__ import annotations

import math
from itertools import combinations_with_replacement

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from slhmc.potential.neighbors import neighbor_pairs


def rdf(frames: list[Atoms], r_max: float = 6.0, bins: int = 120) -> dict:
    """g(r) per element pair, averaged over frames; images counted for any cell (vesin pairs).

    ``r_max`` in Å. Returns ``{"kind": ..., "pairs": {"Cu-Cu": {"r": [Å], "g": [...]}}}``, or {}
    without frames. Non-periodic structures have no volume to normalise by: there the
    pair-distance histogram is returned normalised to unit area (1/Å) instead (``kind`` says which).
    """
    if not frames:
        return {}
    edges = np.linspace(0.0, r_max, bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    shell = 4.0 / 3.0 * math.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    elements = sorted(set(frames[0].numbers))
    periodic = bool(frames[0].pbc.all())
    counts = {pair: np.zeros(bins) for pair in combinations_with_replacement(elements, 2)}
    norm = dict.fromkeys(counts, 0.0)
    for atoms in frames:
        i, j, S = neighbor_pairs(atoms.positions, atoms.cell.array, atoms.pbc, r_max)
        d = np.linalg.norm(atoms.positions[j] - atoms.positions[i] + S @ atoms.cell.array, axis=1)
        zi, zj = atoms.numbers[i], atoms.numbers[j]
        volume = atoms.get_volume() if periodic else 1.0
        for a, b in counts:
            sel = (zi == a) & (zj == b)
            counts[(a, b)] += np.histogram(d[sel], edges)[0]
            n_a, n_b = np.sum(atoms.numbers == a), np.sum(atoms.numbers == b)
            norm[(a, b)] += n_a * n_b / volume if periodic else 1.0
    out = {}
    for (a, b), c in counts.items():
        if periodic:
            g = c / (norm[(a, b)] * shell)
        else:
            g = c / max(c.sum() * (edges[1] - edges[0]), 1e-300)
        out[f"{chemical_symbols[a]}-{chemical_symbols[b]}"] = {"r": centres.tolist(), "g": g.tolist()}
    return {"kind": "g(r)" if periodic else "pair-distance density (1/Å)", "pairs": out}


def msd(frames: list[Atoms]) -> np.ndarray:
    """Mean square displacement (Å²) of each frame from the first one, centre-of-mass drift
    removed (HMC momenta move the centre of mass too, which says nothing about the structure)."""
    if not frames:
        return np.zeros(0)
    masses = frames[0].get_masses()
    r0 = frames[0].positions
    out = []
    for atoms in frames:
        d = atoms.positions - r0
        d -= (masses[:, None] * d).sum(0) / masses.sum()
        out.append(float(np.mean(np.sum(d * d, axis=1))))
    return np.array(out)
