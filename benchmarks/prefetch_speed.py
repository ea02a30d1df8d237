"""Chain trials per second with k = 1, 2, 4 DFT workers against the pre-fetch bound.

The reference is EMT plus a fixed delay (a DFT call of calibrated cost), the system the README
example's Cu32 at 300 K with a frozen network after 20 bootstrap labels. Each k is a real
`slhmc run` (server, ML-MD, trainer and k DFT worker processes). The rate is measured over the
trials after the first 10; the bound is rate(k=1) × (1 − q^k)/(1 − q), q = max(a, 1 − a) with
the acceptance a measured in the same run.

    python benchmarks/prefetch_speed.py [--delay 1.0] [--trials 60] [--workers 1 2 4]
    python benchmarks/prefetch_speed.py --poor --workers 1 3 --paths accept reject   # low acceptance
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


def run(k: int, delay: float, trials: int, workdir: Path, path: str = "auto", poor: bool = False) -> dict:
    config = (ROOT / "examples/cu32_emt/config.toml").read_text()
    config = config.replace('structure = "cu32.xyz"', f'structure = "{ROOT / "examples/cu32_emt/cu32.xyz"}"')
    config = config.replace('calculator = "emt"', f'calculator = "slhmc.validation:delayed_emt"\n'
                                                  f'options = {{delay_s = {delay}}}')
    config = config.replace("trials = 300", f"trials = {trials}").replace("interval = 50", "interval = 0")
    config = config.replace("dft = 1", f"dft = {k}\nprefetch_path = \"{path}\"")
    if poor:  # a network trained on 8 labels, long steps, hot: acceptance below 1/2
        config = config.replace("bootstrap = 20", "bootstrap = 8").replace("timestep = 2.0", "timestep = 4.0")
        config = config.replace("temperature = 300.0", "temperature = 600.0")
    name = f"k{k}-{path}-{'poor' if poor else 'trained'}"
    config_path = workdir / f"{name}.toml"
    config_path.write_text(config)
    out = workdir / name
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "slhmc", "run", str(config_path), "--out", str(out), "--no-progress"],
                   env=env, check=True, capture_output=True)
    records = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    wall = np.array([r["wall_seconds"] for r in records])
    skip = 10
    return {"k": k, "path": path, "rate": (len(records) - skip) / (wall[-1] - wall[skip - 1]),
            "acceptance": float(np.mean([r["accepted"] for r in records])),
            "dft_s": float(np.mean([r["dft_seconds"] for r in records])),
            "mlmd_s": float(np.mean([r["mlmd_seconds"] for r in records]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--delay", type=float, default=1.0, help="s added to each EMT call")
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--paths", nargs="+", default=["auto"], choices=["auto", "accept", "reject"],
                   help="pre-fetch paths to compare (workers.prefetch_path)")
    p.add_argument("--poor", action="store_true", help="a poor network: acceptance well below 1/2")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(1, args.delay, args.trials, Path(tmp), "auto", args.poor)]
        results += [run(k, args.delay, args.trials, Path(tmp), path, args.poor)
                    for path in args.paths for k in args.workers if k > 1]
    base = results[0]["rate"] / trials_per_round(results[0]["acceptance"], results[0]["k"])
    setting = "600 K, 10 x 4 fs, network from 8 labels (poor)" if args.poor else "300 K, 10 x 2 fs, 20 labels"
    print(f"reference: EMT + {args.delay} s; Cu32 {setting}; frozen network; {args.trials} trials per run")
    print("bound: rate(k=1) x trials per round along the most probable path, (1 - q^k)/(1 - q), q = max(a, 1 - a)")
    print(f"{'k':>3} {'path':>7} {'accept':>7} {'trials/s':>9} {'bound':>7} {'ratio':>6} {'DFT s':>6} {'ML-MD s':>8}")
    for r in results:
        bound = base * trials_per_round(r["acceptance"], r["k"])
        print(f"{r['k']:>3} {r['path']:>7} {r['acceptance']:>7.3f} {r['rate']:>9.3f} {bound:>7.3f} "
              f"{r['rate'] / bound:>6.2f} {r['dft_s']:>6.2f} {r['mlmd_s']:>8.3f}")


if __name__ == "__main__":
    main()
