"""How local is the reference? The force error floor of any network with a finite cutoff.

A Behler–Parrinello network gives the force on atom i from the atoms within its cutoff r_c. If the
reference's force on i also depends on atoms farther away, that part is an error no local network
can fit, however many labels or weights it gets. Two estimates, on chain states of a run, each
from pairs of structures that differ only beyond r_c of an atom i (so the change ΔF_i of the
reference force on i comes from the far atoms alone; over independent pairs its variance is twice
the far atoms' share, and a local model's force error per component cannot go below rms(ΔF)/√2):

- frozen core: from a chain state, ML-MD (the run's newest network, Langevin at the run's
  temperature) with every atom within r_c of i held fixed; two frames ``--gap`` fs apart. The far
  atoms are thermal and their bonds relaxed; if the gap is too short to decorrelate them, this
  errs low.
- hybrid: the atoms beyond r_c of i in state A moved to where another chain state B has them.
  Bonds that cross the r_c sphere are stretched more than in a thermal state, so this errs high.

    python benchmarks/sio2_acceptance.py --out runs/sio2_quartz         # chain states (~30 min)
    python benchmarks/sio2_locality.py runs/sio2_quartz [--samples 12] [--cutoff 6]
    python benchmarks/sio2_locality.py runs/sio2_quartz --espresso 4     # and 4 pairs with DFT (slow)

The run's own reference is used (``[reference]`` of its config); ``--espresso N`` repeats the first
N hybrid pairs with Quantum ESPRESSO (LDA, ultrasoft O and norm-conserving Si from Debian's
quantum-espresso-data, 25/200 Ry, Γ; about 2 minutes per call on 2 cores) to see whether a DFT
reference is more local. The run's newest validation force RMSE is printed beside the floor.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.constraints import FixAtoms
from ase.io import read
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

from slhmc.clients.references.factory import make_calculator
from slhmc.potential.calculator import BPNNCalculator
from slhmc.potential.network import BPNN
from slhmc.potential.serialization import load_model
from slhmc.rundir import newest_model_file


def far_moved(a: Atoms, b: Atoms, atom: int, cutoff: float) -> tuple[Atoms, int]:
    """A copy of ``a`` whose atoms farther than ``cutoff`` (Å) from ``atom`` sit where ``b`` has
    them (by the minimum-image displacement), and how many atoms moved."""
    far = a.get_distances(atom, range(len(a)), mic=True) > cutoff
    disp = b.positions - a.positions
    disp -= np.round(disp @ np.linalg.inv(a.cell.array)) @ a.cell.array
    hybrid = a.copy()
    hybrid.positions[far] += disp[far]
    return hybrid, int(far.sum())


def frozen_core_pair(a: Atoms, atom: int, cutoff: float, model: BPNN, temperature_K: float, gap_fs: float,
                     seed: int) -> tuple[Atoms, Atoms, int]:
    """Two frames of ML-MD from ``a`` in which every atom within ``cutoff`` of ``atom`` stayed
    fixed, ``gap_fs`` apart (after as long again to equilibrate the far atoms), and how many
    atoms moved."""
    near = a.get_distances(atom, range(len(a)), mic=True) <= cutoff
    md = a.copy()
    md.set_constraint(FixAtoms(mask=near))
    md.calc = BPNNCalculator(model, warn_extrapolation=False)
    rng = np.random.default_rng(seed)
    thermalize_momenta(md, temperature_K, rng=rng)
    timestep_fs = 0.5
    dyn = Langevin(md, timestep_fs * units.fs, temperature_K=temperature_K, friction=0.02 / units.fs,
                   fixcm=False, rng=rng)  # the fixed core holds the cell's atoms in place
    steps = max(1, round(gap_fs / timestep_fs))
    dyn.run(steps)
    first = md.copy()
    dyn.run(steps)
    second = md.copy()
    for frame in (first, second):
        frame.set_constraint()
    return first, second, int((~near).sum())


def espresso_options() -> dict:
    """``[reference.options]`` of the ``espresso`` reference for the DFT comparison (LDA, Debian's
    pseudopotentials, which the reference finds by default; tprnfor is always on)."""
    nproc = os.cpu_count() or 1
    command = f"mpirun --allow-run-as-root -np {nproc} pw.x" if shutil.which("mpirun") and nproc > 1 else "pw.x"
    return {"command": command, "pseudopotentials": {"Si": "Si.pz-vbc.UPF", "O": "O.pz-rrkjus.UPF"},
            "input_data": {"system": {"ecutwfc": 25, "ecutrho": 200}, "electrons": {"conv_thr": 1e-8}},
            "kpts": None}


def reference_force(atoms: Atoms, name: str, options: dict, atom: int) -> np.ndarray:
    """The force (eV/Å) on ``atom`` from a fresh calculator of reference ``name``."""
    atoms = atoms.copy()
    atoms.calc = make_calculator(name, options)
    try:
        return atoms.get_forces()[atom]
    finally:
        close = getattr(atoms.calc, "close", None)
        if close is not None:
            close()  # a file-based code's scratch directory


def far_force_changes(name: str, options: dict, estimate: str, cases: list, cutoff: float) -> list[np.ndarray]:
    """ΔF_i (meV/Å) of each pair with reference ``name``; prints each and the floor they imply."""
    changes = []
    for x, y, atom, what in cases:
        changes.append(1e3 * (reference_force(y, name, options, atom) - reference_force(x, name, options, atom)))
        print(f"  {name}, {estimate}: {what}: ΔF = {np.array2string(changes[-1], precision=1)} meV/Å", flush=True)
    rms = float(np.sqrt(np.mean(np.square(changes))))
    print(f"{name}, {estimate}: rms ΔF per component {rms:.1f} meV/Å over {len(changes)} pairs; force error floor "
          f"of a network with r_c = {cutoff} Å: {rms / math.sqrt(2):.1f} meV/Å", flush=True)
    return changes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="an SLHMC run directory (its dataset.extxyz holds the chain states)")
    ap.add_argument("--samples", type=int, default=12, help="pairs of structures per estimate")
    ap.add_argument("--gap", type=float, default=100.0, help="fs between the frozen-core frames")
    ap.add_argument("--cutoff", type=float, default=None, help="Å; default: the run's [potential] cutoff")
    ap.add_argument("--skip", type=int, default=100, help="labels left out at the start (bootstrap, burn-in)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--espresso", type=int, default=0, metavar="N",
                    help="also the first N hybrid pairs with Quantum ESPRESSO LDA, beside the run's reference "
                         "on the same pairs (about 2 min per call on 2 cores)")
    args = ap.parse_args()

    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())["config"]
    cutoff = args.cutoff or float(config["potential"]["cutoff"])
    states = read(run / "dataset.extxyz", f"{args.skip}:")
    rng = np.random.default_rng(args.seed)
    triples = [(*rng.choice(len(states), 2, replace=False), int(rng.integers(len(states[0]))))
               for _ in range(args.samples)]
    reference = config["reference"]
    name = reference["calculator"]
    print(f"{run}: {len(states)} chain states, {len(states[0])} atoms, r_c = {cutoff} Å, {args.samples} samples")
    model = load_model(newest_model_file(run))[0]  # the network of the frozen-core ML-MD
    temperature_K = float(config["system"]["temperature"])
    pairs = {"frozen core": [], "hybrid": []}
    for n, (ka, kb, atom) in enumerate(triples):
        a = states[ka]
        first, second, moved = frozen_core_pair(a, atom, cutoff, model, temperature_K, args.gap, args.seed + n)
        pairs["frozen core"].append((first, second, atom, f"state {ka + args.skip} atom {atom} "
                                     f"({a.get_chemical_symbols()[atom]}), {moved} far atoms by ML-MD"))
        hybrid, moved = far_moved(a, states[kb], atom, cutoff)
        pairs["hybrid"].append((a, hybrid, atom, f"state {ka + args.skip} atom {atom} "
                                f"({a.get_chemical_symbols()[atom]}), {moved} far atoms as in state {kb + args.skip}"))
    changes = {estimate: far_force_changes(name, reference["options"], estimate, cases, cutoff)
               for estimate, cases in pairs.items()}
    if args.espresso:
        dft = far_force_changes("espresso", espresso_options(), "hybrid", pairs["hybrid"][:args.espresso], cutoff)
        ref = np.sqrt(np.mean(np.square(changes["hybrid"][:args.espresso])))
        print(f"the same {len(dft)} hybrid pairs: rms ΔF {np.sqrt(np.mean(np.square(dft))):.1f} meV/Å with "
              f"espresso LDA, {ref:.1f} meV/Å with {name}")
    metrics = run / "models" / "metrics.jsonl"
    if metrics.exists():
        last = json.loads(metrics.read_text().splitlines()[-1])
        print(f"the run's newest model ({last.get('n_labels')} labels): validation force RMSE "
              f"{last['validation']['force_rmse_mev_per_A']:.1f} meV/Å")


if __name__ == "__main__":
    main()
