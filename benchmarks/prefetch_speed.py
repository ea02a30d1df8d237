"""Chain trials per second with k = 1, 2, 4 DFT workers against the pre-fetch bound.

The reference is EMT plus a fixed delay (a DFT call of calibrated cost), the system the README
example's Cu32 at 300 K with a frozen network after 20 bootstrap labels. Each k is a real
`slhmc run` (server, ML-MD, trainer and k DFT worker processes). The rate is measured over the
trials after the first 10; the bound is rate(k=1) × (1 − q^k)/(1 − q), q = max(a, 1 − a) with
the acceptance a measured in the same run.

    python benchmarks/prefetch_speed.py [--delay 1.0] [--trials 60] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from slhmc.server.prefetch import trials_per_round

ROOT = Path(__file__).parents[1]


def run(k: int, delay: float, trials: int, workdir: Path) -> dict:
    config = (ROOT / "examples/cu32_emt/config.toml").read_text()
    config = config.replace('structure = "cu32.xyz"', f'structure = "{ROOT / "examples/cu32_emt/cu32.xyz"}"')
    config = config.replace('calculator = "emt"', f'calculator = "slhmc.validation:delayed_emt"\n'
                                                  f'options = {{delay_s = {delay}}}')
    config = config.replace("trials = 300", f"trials = {trials}").replace("interval = 50", "interval = 0")
    config = config.replace("dft = 1", f"dft = {k}")
    path = workdir / f"k{k}.toml"
    path.write_text(config)
    out = workdir / f"k{k}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "slhmc", "run", str(path), "--out", str(out), "--no-progress"],
                   env=env, check=True, capture_output=True)
    records = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    wall = np.array([r["wall_seconds"] for r in records])
    skip = 10
    return {"k": k, "rate": (len(records) - skip) / (wall[-1] - wall[skip - 1]),
            "acceptance": float(np.mean([r["accepted"] for r in records])),
            "dft_s": float(np.mean([r["dft_seconds"] for r in records])),
            "mlmd_s": float(np.mean([r["mlmd_seconds"] for r in records]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--delay", type=float, default=1.0, help="s added to each EMT call")
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(k, args.delay, args.trials, Path(tmp)) for k in args.workers]
    base = results[0]["rate"] / trials_per_round(results[0]["acceptance"], results[0]["k"])
    print(f"reference: EMT + {args.delay} s; Cu32 300 K, 10 x 2 fs; {args.trials} trials per run")
    print(f"{'k':>3} {'accept':>7} {'trials/s':>9} {'bound':>7} {'ratio':>6} {'DFT s':>6} {'ML-MD s':>8}")
    for r in results:
        bound = base * trials_per_round(r["acceptance"], r["k"])
        print(f"{r['k']:>3} {r['acceptance']:>7.3f} {r['rate']:>9.3f} {bound:>7.3f} {r['rate'] / bound:>6.2f} "
              f"{r['dft_s']:>6.2f} {r['mlmd_s']:>8.3f}")


if __name__ == "__main__":
    main()
