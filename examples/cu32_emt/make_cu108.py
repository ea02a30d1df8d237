"""Write cu108.xyz: 3x3x3 conventional fcc cells of Cu (108 atoms, a = 3.61 Å, the lattice constant
of cu32.xyz), the start structure of README's ``slhmc md`` example. The file is shipped; this script
says how it was made.

    python examples/cu32_emt/make_cu108.py
"""

from pathlib import Path

from ase.build import bulk
from ase.io import write

LATTICE_CONSTANT_A = 3.61  # Å, as in cu32.xyz (2x2x2 cells of the same crystal)

if __name__ == "__main__":
    atoms = bulk("Cu", "fcc", a=LATTICE_CONSTANT_A, cubic=True).repeat((3, 3, 3))
    assert len(atoms) == 108
    out = Path(__file__).with_name("cu108.xyz")
    write(out, atoms, format="extxyz")
    print(f"{out}: {atoms.get_chemical_formula()}, cell {atoms.cell.lengths()} Å")
