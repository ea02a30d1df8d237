"""Sanity checks of a start structure: overlapping atoms are refused, and a one-line summary
(formula, shortest distance per element pair) shows at a glance a structure built wrong.

A wrong cell can look harmless: α-quartz built from coordinates in the wrong origin setting gave
Si6O6 with Si–Si at 1.60 Å, and it ran without complaint. The summary flags contacts far shorter
than a covalent bond, but only a hard overlap (under ``MIN_DISTANCE``) is refused: hot, strained
or unusual structures must still run.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list

MIN_DISTANCE = 0.5  # Å: no bond is this short (H2: 0.74 Å); closer atoms overlap, e.g. from a wrong cell
SHORT_FRACTION = 0.75  # contacts shorter than this fraction of the covalent bond length are flagged
SUMMARY_CUTOFF = 5.0  # Å: element pairs farther apart than this are reported as such


class StructureError(ValueError):
    """A start structure that cannot be right."""


def _pairs(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half neighbour list ``i, j, d``: vesin (fast on large cells), ASE where vesin refuses a cell."""
    pbc = [bool(p) for p in atoms.pbc]
    try:
        from vesin import NeighborList

        return NeighborList(cutoff=float(cutoff), full_list=False).compute(
            points=atoms.positions, box=atoms.cell.array, periodic=pbc, quantities="ijd")
    except Exception:  # e.g. a zero cell vector along a non-periodic direction
        return neighbor_list("ijd", atoms, cutoff)


def shortest_distances(atoms: Atoms, cutoff: float = SUMMARY_CUTOFF) -> dict[tuple[str, str], tuple[float, int, int]]:
    """Per element pair (alphabetical), the shortest distance within ``cutoff`` and its two atoms.

    Periodic images count (any cell shape, also cells shorter than the cutoff), including an
    atom's own image.
    """
    i, j, d = _pairs(atoms, cutoff)
    symbols = np.asarray(atoms.get_chemical_symbols())
    out: dict[tuple[str, str], tuple[float, int, int]] = {}
    for k in np.argsort(d, kind="stable"):  # shortest first: the first hit per pair is its minimum
        a, b = int(i[k]), int(j[k])
        pair = tuple(sorted((str(symbols[a]), str(symbols[b]))))
        if pair not in out:
            out[pair] = (float(d[k]), a, b)
    return out


def check_structure(atoms: Atoms) -> None:
    """Refuse overlapping atoms (closer than ``MIN_DISTANCE``)."""
    if len(atoms) == 0:
        raise StructureError("the structure has no atoms")
    pbc = np.asarray(atoms.pbc)
    lengths = atoms.cell.lengths()
    if np.any(pbc & (lengths < 1e-6)):
        raise StructureError(f"periodic along {np.flatnonzero(pbc & (lengths < 1e-6)).tolist()} but the cell "
                             "vector there is zero; give a cell or set pbc false")
    close = shortest_distances(atoms, MIN_DISTANCE)
    if close:
        (a_sym, b_sym), (d, a, b) = min(close.items(), key=lambda kv: kv[1][0])
        what = "its own periodic image" if a == b else f"atom {b} ({atoms[b].symbol})"
        raise StructureError(
            f"atom {a} ({atoms[a].symbol}) is {d:.3f} Å from {what}, closer than {MIN_DISTANCE} Å: overlapping "
            "atoms, e.g. from a wrong cell, coordinates in a different origin setting, or duplicated sites"
        )


def structure_summary(atoms: Atoms) -> str:
    """One line: formula, atom count, cell, shortest distance per element pair; contacts much
    shorter than a covalent bond are marked ``SHORT``."""
    pbc = np.asarray(atoms.pbc)
    if pbc.any():
        lengths, angles = atoms.cell.cellpar()[:3], atoms.cell.cellpar()[3:]
        cell = (f"cell {' x '.join(f'{x:.3f}' for x in lengths)} Å, "
                f"{'/'.join(f'{x:.1f}' for x in angles)}°, pbc {''.join('T' if p else 'F' for p in pbc)}")
    else:
        cell = "no periodic cell"
    nearest = shortest_distances(atoms)
    symbols = sorted(set(atoms.get_chemical_symbols()))
    parts = []
    for n, a in enumerate(symbols):
        for b in symbols[n:]:
            if (a, b) not in nearest:
                parts.append(f"{a}-{b} > {SUMMARY_CUTOFF:g}")
                continue
            d, i, j = nearest[(a, b)]
            bond = covalent_radii[atoms.numbers[i]] + covalent_radii[atoms.numbers[j]]
            short = f" SHORT (covalent bond {bond:.2f})" if d < SHORT_FRACTION * bond else ""
            parts.append(f"{a}-{b} {d:.3f}{short}")
    counts: dict[str, int] = {}
    for symbol in atoms.get_chemical_symbols():  # in order of appearance: Si3O6, as the file lists them
        counts[symbol] = counts.get(symbol, 0) + 1
    formula = "".join(f"{s}{n if n > 1 else ''}" for s, n in counts.items())
    return (f"{formula}, {len(atoms)} atoms, {cell}; shortest distances (Å): "
            f"{', '.join(parts) or 'single atom'}")
