"""Can the SLHMC-trained α-quartz network be trusted for long MD? 10 ps of ``slhmc md`` at 300 K
with the newest model of a run of ``examples/sio2_quartz``, then ``--frames`` frames spread over
the trajectory re-labelled with the run's own reference (GFN1-xTB via tblite): per frame the ML
energy error (meV/atom), the force RMSE (meV/Å) and the number of atoms the extrapolation check
flagged at that step; and the first flagged step against the first step where the energy error
exceeds 20 meV/atom. The MD is Langevin (NVT) at the temperature from the first step, every step
written out (``--stride``), so that the frames around the first flagged step can be re-labelled:
half of them are spread up to that step, half after it.

    python benchmarks/sio2_acceptance.py --out runs/sio2_quartz      # the SLHMC run (~30 min)
    python benchmarks/sio2_long_md.py runs/sio2_quartz [--md-out runs/sio2_md] [--frames 20]

``--analyze-only`` re-labels an existing ``--md-out`` directory.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from ase.io import read

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="an SLHMC run directory of the quartz example (its newest model is used)")
    ap.add_argument("--md-out", default="runs/sio2_md")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--picoseconds", type=float, default=10.0)
    ap.add_argument("--timestep", type=float, default=0.5, help="fs")
    ap.add_argument("--temperature", type=float, default=300.0)
    ap.add_argument("--stride", type=int, default=10, help="write every N-th step")
    ap.add_argument("--analyze-only", action="store_true")
    args = ap.parse_args()
    md = Path(args.md_out)
    steps = int(round(args.picoseconds * 1000 / args.timestep))
    if not args.analyze_only:
        subprocess.run([sys.executable, "-m", "slhmc", "md", args.run, "--structure",
                        str(ROOT / "examples" / "sio2_quartz" / "quartz72.extxyz"), "--temperature",
                        str(args.temperature), "--steps", str(steps), "--timestep", str(args.timestep),
                        "--ensemble", "nvt", "--equilibrate", "0", "--stride", str(args.stride), "--out", str(md),
                        "--no-progress"], check=False)
    from slhmc.clients.references import make_calculator
    from slhmc.potential import load_calculator

    config = json.loads((Path(args.run) / "config.json").read_text())["config"]["reference"]
    reference = make_calculator(config["calculator"], config["options"])
    ml = load_calculator(args.run)
    frames = read(md / "repeat_0" / "trajectory.extxyz", ":")
    with open(md / "repeat_0" / "energies.csv") as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f)}
    meta = json.loads((md / "md.json").read_text())
    first = (meta.get("extrapolation", {}).get("repeats") or [{}])[0].get("first_step")
    stride = int(meta["stride"])
    last = len(frames) - 1
    if first is None or first < 0:
        picks = np.linspace(0, last, min(args.frames, len(frames)))
    else:  # half up to the first flagged frame, half after it
        k0 = min(first // stride, last)
        half = args.frames // 2
        after = np.linspace(k0, min(last, 3 * k0 + 10), half + 1)[1:]
        picks = np.concatenate([np.linspace(0, k0, half + 1)[1:], after])
    picks = sorted(set(np.asarray(picks).round().astype(int).tolist()))
    print(f"{md}: {len(frames)} frames of {steps} steps x {args.timestep} fs at {args.temperature:g} K; "
          f"first step with extrapolation: {first}")
    print("| step | t (ps) | extrapolating atoms | E_ML - E_ref (meV/atom) | force RMSE (meV/Å) |")
    print("|---|---|---|---|---|")
    errors, first_bad = [], None
    for k in picks:
        atoms = frames[k]
        step = k * stride
        atoms.calc = ml
        e_ml, f_ml = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = reference
        flagged = rows.get(step, {}).get("extrapolating_atoms", "")
        try:
            e_ref, f_ref = atoms.get_potential_energy(), atoms.get_forces()
        except Exception as err:  # the structure is so far from physical that the SCF fails
            print(f"| {step} | {step * args.timestep / 1000:.3f} | {flagged} | reference failed: {err} | |")
            first_bad = step if first_bad is None else first_bad
            continue
        de = 1e3 * (e_ml - e_ref) / len(atoms)
        errors.append(de)
        if first_bad is None and abs(de) > 20:
            first_bad = step
        print(f"| {step} | {step * args.timestep / 1000:.3f} | {flagged} | {de:+.3f} | "
              f"{1e3 * np.sqrt(np.mean((f_ml - f_ref) ** 2)):.1f} |", flush=True)
    errors = np.array(errors)
    print(f"energy error: rms {np.sqrt(np.mean(errors ** 2)):.3f} meV/atom, max |{np.abs(errors).max():.3f}| "
          f"meV/atom, spread (std) {errors.std():.3f} meV/atom; first frame over 20 meV/atom: {first_bad}")


if __name__ == "__main__":
    main()
