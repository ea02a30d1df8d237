"""Build the α-quartz cells of this example: quartz9.extxyz (the 9-atom unit cell, Si3O6) and
quartz72.extxyz (its 2×2×2 supercell, Si24O48, the paper's system).

Experimental structure at ambient conditions: Levien, Prewitt & Weidner, "Structure and elastic
properties of quartz at pressure", Am. Mineral. 65, 920 (1980): a = 4.916 Å, c = 5.405 Å,
Si x = 0.4697, O (0.4135, 0.2669, 0.1191), listed there with Si at z = 0. ase.spacegroup uses the
International Tables origin of P3_221 (No. 154), where the Si site is (x, 0, 2/3): every z is
shifted by +2/3 (O: 0.1191 + 2/3 = 0.7858). Used unshifted, the same call gives a wrong 12-atom
cell, Si6O6 with Si–Si at 1.80 Å, hence the checks below.

Run from anywhere: python examples/sio2_quartz/make_quartz.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write
from ase.neighborlist import neighbor_list
from ase.spacegroup import crystal

HERE = Path(__file__).resolve().parent
BOND_CUTOFF = 2.0  # Å: first Si–O shell at 1.61 Å, next neighbours (O–O 2.6 Å, Si–Si 3.06 Å) well beyond


def quartz() -> Atoms:
    atoms = crystal(["Si", "O"], basis=[(0.4697, 0.0, 2 / 3), (0.4135, 0.2669, 0.7858)], spacegroup=154,
                    cellpar=[4.916, 4.916, 5.405, 90, 90, 120])
    return plain(atoms)


def plain(atoms: Atoms) -> Atoms:
    """Si first, then O, wrapped into the cell, without the spacegroup bookkeeping arrays."""
    order = np.argsort(-atoms.numbers, kind="stable")
    out = Atoms(atoms.numbers[order], atoms.positions[order], cell=atoms.cell, pbc=True)
    out.wrap()
    return out


def check_quartz(atoms: Atoms) -> None:
    """SiO2 with corner-sharing SiO4 tetrahedra: every Si has exactly 4 O within 2 Å, every O exactly
    2 Si, no Si–Si or O–O that close, Si–O 1.60–1.62 Å."""
    symbols = np.asarray(atoms.get_chemical_symbols())
    assert (symbols == "O").sum() == 2 * (symbols == "Si").sum() > 0, atoms.get_chemical_formula()
    i, j, d = neighbor_list("ijd", atoms, BOND_CUTOFF)
    assert np.all(symbols[i] != symbols[j]), "Si–Si or O–O closer than 2 Å"
    assert 1.60 <= d.min() and d.max() <= 1.62, f"Si–O from {d.min():.3f} to {d.max():.3f} Å"
    neighbours = np.bincount(i, minlength=len(atoms))
    assert np.all(neighbours[symbols == "Si"] == 4) and np.all(neighbours[symbols == "O"] == 2), neighbours


def main() -> None:
    cell = quartz()
    supercell = plain(cell.repeat((2, 2, 2)))
    for atoms, name in [(cell, "quartz9.extxyz"), (supercell, "quartz72.extxyz")]:
        check_quartz(atoms)
        write(HERE / name, atoms, format="extxyz")
        print(f"{name}: {atoms.get_chemical_formula(mode='reduce')}, {len(atoms)} atoms")


if __name__ == "__main__":
    main()
