"""Acceptance of the α-quartz example at the paper's settings: a real ``slhmc run`` of
``examples/sio2_quartz/config.toml`` (72 atoms, GFN1-xTB, 400 trials of 20 x 0.25 fs, refit every
100 labels), then the numbers the issue asks for: acceptance overall and over the second half,
and per model version the acceptance, the rms error of the trajectory energy change
ΔE_ML - ΔE_ref (meV/atom and kT for the cell), the acceptance that error predicts, and each
refit's time, steps and whether it stopped on the validation criterion.

    python benchmarks/sio2_acceptance.py [--config examples/sio2_quartz/config_fast.toml] [--out runs/sio2]

About 20-40 minutes on 2 cores (one GFN1-xTB call on 72 atoms is ~2 s on a quiet core).
``--analyze-only`` re-reads an existing run directory.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from ase import units

ROOT = Path(__file__).resolve().parents[1]


def report(run: Path) -> None:
    trials = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    temperature = json.loads((run / "config.json").read_text())["config"]["system"]["temperature"]
    kT = units.kB * temperature
    n = len(trials)
    acc = [t["accepted"] for t in trials]
    print(f"{run}: {n} trials at {temperature:g} K; acceptance {sum(acc) / n:.3f} overall, "
          f"{sum(acc[n // 2:]) / (n - n // 2):.3f} over the second half")
    metrics = {}
    for line in (run / "models" / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        metrics[m["version"]] = m
    print("| model | labels | fit (s, steps, converged) | trials | acceptance | predicted | rms ΔE err (meV/atom) "
          "| rms ΔE err (kT) |")
    print("|---|---|---|---|---|---|---|---|")
    for version in sorted({t["model"] for t in trials}):
        sel = [t for t in trials if t["model"] == version]
        errs = [((t["e_ml"] - t["e_ml_start"]) - (t["e_ref"] - t["e_ref_old"])) for t in sel]
        rms = math.sqrt(sum(e * e for e in errs) / len(errs))
        predicted = sum(min(1.0, math.exp(e / kT)) for e in errs) / len(errs)
        m = metrics.get(version, {})
        fit = f"{m.get('seconds', float('nan')):.0f}, {m.get('steps')}, {m.get('converged')}"
        accepted = sum(t["accepted"] for t in sel) / len(sel)
        print(f"| {version} | {m.get('n_labels')} | {fit} | {len(sel)} | {accepted:.3f} | {predicted:.3f} "
              f"| {1e3 * rms / sel[0]['n_atoms']:.4f} | {rms / kT:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "examples" / "sio2_quartz" / "config.toml"))
    ap.add_argument("--out", default="runs/sio2_quartz")
    ap.add_argument("--analyze-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.analyze_only:
        subprocess.run([sys.executable, "-m", "slhmc", "run", args.config, "--out", str(out), "--no-progress"],
                       check=True)
    report(out)


if __name__ == "__main__":
    main()
