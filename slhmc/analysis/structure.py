"""Structural observables of a sequence of frames (chain states or MD snapshots): the radial
distribution function per element pair and the mean square displacement."""

from __future__ import annotations

import math
from itertools import combinations_with_replacement

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from slhmc.potential.neighbors import neighbor_pairs


def _pair_histograms(frames: list[Atoms], r_max: float, bins: int):
    """Per frame: {(Z_a, Z_b): pair-distance histogram on ``bins`` bins up to ``r_max`` Å} and
    {(Z_a, Z_b): N_a N_b / V (1/Å³), or 1 for a non-periodic frame}; pairs of the first frame's elements."""
    edges = np.linspace(0.0, r_max, bins + 1)
    elements = sorted(set(frames[0].numbers))
    periodic = bool(frames[0].pbc.all())
    for atoms in frames:
        i, j, S = neighbor_pairs(atoms.positions, atoms.cell.array, atoms.pbc, r_max)
        d = np.linalg.norm(atoms.positions[j] - atoms.positions[i] + S @ atoms.cell.array, axis=1)
        zi, zj = atoms.numbers[i], atoms.numbers[j]
        volume = atoms.get_volume() if periodic else 1.0
        counts, norm = {}, {}
        for a, b in combinations_with_replacement(elements, 2):
            counts[(a, b)] = np.histogram(d[(zi == a) & (zj == b)], edges)[0]
            norm[(a, b)] = np.sum(atoms.numbers == a) * np.sum(atoms.numbers == b) / volume if periodic else 1.0
        yield counts, norm


def _rdf_grid(r_max: float, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin edges, centres (Å) and shell volumes 4π/3 (r₂³ − r₁³) (Å³)."""
    edges = np.linspace(0.0, r_max, bins + 1)
    return edges, 0.5 * (edges[1:] + edges[:-1]), 4.0 / 3.0 * math.pi * (edges[1:] ** 3 - edges[:-1] ** 3)


def _kind(frames: list[Atoms]) -> tuple[bool, str]:
    periodic = bool(frames[0].pbc.all())
    return periodic, "g(r)" if periodic else "pair-distance density (1/Å)"


def rdf(frames: list[Atoms], r_max: float = 6.0, bins: int = 120) -> dict:
    """g(r) per element pair, averaged over frames; images counted for any cell (vesin pairs).

    ``r_max`` in Å. Returns ``{"kind": ..., "pairs": {"Cu-Cu": {"r": [Å], "g": [...]}}}``, or {}
    without frames. Non-periodic structures have no volume to normalise by: there the
    pair-distance histogram is returned normalised to unit area (1/Å) instead (``kind`` says which).
    """
    if not frames:
        return {}
    edges, centres, shell = _rdf_grid(r_max, bins)
    periodic, kind = _kind(frames)
    counts: dict = {}
    norm: dict = {}
    for c, n in _pair_histograms(frames, r_max, bins):
        for pair in c:
            counts[pair] = counts.get(pair, 0) + c[pair]
            norm[pair] = norm.get(pair, 0.0) + n[pair]
    out = {}
    for (a, b), c in counts.items():
        if periodic:
            g = c / (norm[(a, b)] * shell)
        else:
            g = c / max(c.sum() * (edges[1] - edges[0]), 1e-300)
        out[f"{chemical_symbols[a]}-{chemical_symbols[b]}"] = {"r": centres.tolist(), "g": g.tolist()}
    return {"kind": kind, "pairs": out}


def rdf_per_frame(frames: list[Atoms], r_max: float = 6.0, bins: int = 120) -> tuple[str, np.ndarray, dict]:
    """g(r) of every frame on its own, for error bars over frames: (``kind`` as in :func:`rdf`,
    bin centres in Å, {"Cu-Cu": array (frames, bins)}). Needs at least one frame."""
    edges, centres, shell = _rdf_grid(r_max, bins)
    periodic, kind = _kind(frames)
    per_pair: dict[tuple[int, int], list[np.ndarray]] = {}
    for counts, norm in _pair_histograms(frames, r_max, bins):
        for pair, c in counts.items():
            if periodic:
                g = c / (norm[pair] * shell)
            else:
                g = c / max(c.sum() * (edges[1] - edges[0]), 1e-300)
            per_pair.setdefault(pair, []).append(g)
    return kind, centres, {f"{chemical_symbols[a]}-{chemical_symbols[b]}": np.array(g)
                           for (a, b), g in per_pair.items()}


def msd(frames: list[Atoms]) -> np.ndarray:
    """Mean square displacement (Å²) of each frame from the first one, centre-of-mass drift
    removed (HMC momenta move the centre of mass too, which says nothing about the structure).

    Frames with different cells (NPT) are compared in fractional coordinates, the displacement
    expressed in each frame's own cell: the affine stretch of a volume change is not diffusion."""
    if not frames:
        return np.zeros(0)
    masses = frames[0].get_masses()
    r0 = frames[0].positions
    cell0 = frames[0].cell.array
    variable = bool(frames[0].pbc.all()) and any(not np.array_equal(atoms.cell.array, cell0) for atoms in frames)
    s0 = np.linalg.solve(cell0.T, r0.T).T if variable else None
    out = []
    for atoms in frames:
        if variable:
            d = (np.linalg.solve(atoms.cell.array.T, atoms.positions.T).T - s0) @ atoms.cell.array
        else:
            d = atoms.positions - r0
        d -= (masses[:, None] * d).sum(0) / masses.sum()
        out.append(float(np.mean(np.sum(d * d, axis=1))))
    return np.array(out)
