"""Server + protocol overhead per SLHMC trial, against ASE's i-PI socket round trip.

SLHMC: a real `slhmc run` on the README example's Cu32 with plain EMT (an instant reference)
and one velocity-Verlet step per trial; overhead per trial = wall time per trial − ML-MD time −
reference time, i.e. what the server, ZeroMQ, msgpack and validation cost for the two round
trips of a trial (ML-MD task, label task). ASE: a `SocketIOCalculator` server and a
`SocketClient` running EMT in another process over a unix socket, the same atoms; overhead per
call = wall time − EMT time. Both as a fraction of a real DFT call measured here (PySCF water
0.28 s, QE Si8 1.2 s).

    python benchmarks/protocol_overhead.py [--trials 300]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.calculators.emt import EMT
from ase.calculators.socketio import SocketClient, SocketIOCalculator
from ase.io import read

ROOT = Path(__file__).parents[1]
REAL_DFT_S = {"PySCF H2O PBE/def2-SVP": 0.28, "QE Si8 LDA 2x2x2 k": 1.19}


def slhmc_overhead(trials: int, workdir: Path) -> float:
    config = (ROOT / "examples/cu32_emt/config.toml").read_text()
    config = config.replace('structure = "cu32.xyz"', f'structure = "{ROOT / "examples/cu32_emt/cu32.xyz"}"')
    config = config.replace("trials = 300", f"trials = {trials}").replace("interval = 50", "interval = 0")
    config = config.replace("md_steps = 10", "md_steps = 1")
    path = workdir / "overhead.toml"
    path.write_text(config)
    out = workdir / "run"
    subprocess.run([sys.executable, "-m", "slhmc", "run", str(path), "--out", str(out), "--no-progress"],
                   env=dict(os.environ, OMP_NUM_THREADS="1"), check=True, capture_output=True)
    records = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    skip = 20
    wall = (records[-1]["wall_seconds"] - records[skip - 1]["wall_seconds"]) / (len(records) - skip)
    work = np.mean([r["mlmd_seconds"] + r["dft_seconds"] for r in records[skip:]])
    return wall - work


def _client(name: str) -> None:
    atoms = read(ROOT / "examples/cu32_emt/cu32.xyz")
    atoms.calc = EMT()
    SocketClient(unixsocket=name).run(atoms)


def ase_ipi_overhead(calls: int) -> float:
    atoms = read(ROOT / "examples/cu32_emt/cu32.xyz")
    name = f"slhmc-bench-{os.getpid()}"
    rng = np.random.default_rng(0)
    emt = EMT()
    with SocketIOCalculator(unixsocket=name) as calc:
        proc = mp.get_context("spawn").Process(target=_client, args=(name,))
        proc.start()
        atoms.calc = calc
        atoms.get_potential_energy()
        wall = emt_time = 0.0
        for _ in range(calls):
            atoms.positions += rng.normal(0, 0.01, atoms.positions.shape)
            t0 = time.perf_counter()
            atoms.get_forces()
            wall += time.perf_counter() - t0
            probe = atoms.copy()
            probe.calc = emt
            t0 = time.perf_counter()
            probe.get_forces()
            emt_time += time.perf_counter() - t0
    proc.join(timeout=10)
    if proc.is_alive():
        proc.terminate()
    return (wall - emt_time) / calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=300)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours = slhmc_overhead(args.trials, Path(tmp))
    ase = ase_ipi_overhead(args.trials)
    print(f"Cu32, EMT reference; {args.trials} trials / calls")
    print(f"slhmc server + protocol overhead per trial (2 round trips): {1e3 * ours:.2f} ms")
    print(f"ASE i-PI socket overhead per call (1 round trip, unix socket): {1e3 * ase:.2f} ms")
    for name, seconds in REAL_DFT_S.items():
        print(f"  as a fraction of one {name} call ({seconds} s): slhmc {100 * ours / seconds:.2f} %, "
              f"ASE i-PI {100 * ase / seconds:.2f} %")


if __name__ == "__main__":
    main()
