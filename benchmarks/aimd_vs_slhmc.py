"""Reference calls to reach one error bar on ⟨E_pot⟩: plain MD with the reference (AIMD) vs SLHMC.

Both sample Cu32 with EMT (standing in for DFT) at the example's 300 K. The error of a mean is
sqrt(var · τ / N), so the reference calls needed for a target error are N = var · τ / err²:
every MD step is one reference call, every SLHMC trial is one. The ratio of the two N at equal
target error is the figure of merit; it does not depend on the target.

- AIMD: ASE's Langevin thermostat (friction 0.01/fs) with the reference forces, 4 fs steps
  (generous for Cu: 2 fs is the usual DFT-MD choice), after 1 ps of equilibration. (ASE's Bussi
  thermostat was tried too; its <E_pot> came out ~10% below Langevin's and exact HMC's, about
  10 error bars, so it is left out rather than trusted.)
- SLHMC: the algorithm of the server (same chain functions, same integrator) run in one process
  with the trained, frozen network of a finished run (default: the README example's), so that
  only proposals and acceptance are timed, not sockets. The labels that trained the network are
  counted separately ("training calls") and added in the last column.

It also prints acceptance and τ against the trajectory length (md_steps × timestep).

    python benchmarks/aimd_vs_slhmc.py [--run runs/cu32] [--aimd-steps 20000] [--trials 400]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import units
from ase.calculators.emt import EMT
from ase.io import read
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

from slhmc.config import load_config
from slhmc.potential import load_calculator
from slhmc.statistics import estimate
from slhmc.validation import plain_hmc

ROOT = Path(__file__).parents[1]


def aimd(start, temperature_K: float, steps: int, timestep_fs: float = 4.0) -> np.ndarray:
    atoms = start.copy()
    atoms.calc = EMT()
    rng = np.random.default_rng(1)
    thermalize_momenta(atoms, temperature_K, rng=rng)
    md = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=0.01 / units.fs,
                  fixcm=False, rng=rng)
    md.run(int(1000 / timestep_fs))
    energies = []
    md.attach(lambda: energies.append(atoms.get_potential_energy()), interval=1)
    md.run(steps)
    return np.array(energies[1:]) / len(atoms)


def calls_for(e: np.ndarray, target: float) -> tuple[float, float, float]:
    """(τ, var, reference calls for the target error) of a per-atom energy series."""
    est = estimate(e)
    var = float(np.var(e, ddof=1))
    return est.tau, var, var * est.tau / target**2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(ROOT / "runs/cu32"), help="a finished run whose newest model to use")
    p.add_argument("--config", default=str(ROOT / "examples/cu32_emt/config.toml"))
    p.add_argument("--aimd-steps", type=int, default=20000)
    p.add_argument("--trials", type=int, default=400, help="SLHMC trials per trajectory length")
    p.add_argument("--target-mev", type=float, default=0.1, help="target error of <E_pot>, meV/atom")
    args = p.parse_args()

    cfg = load_config(args.config)
    start = read(cfg.structure_path)
    T = cfg.system.temperature
    target = args.target_mev * 1e-3
    n_training = len(read(Path(args.run) / "dataset.extxyz", index=":"))
    model = load_calculator(args.run, device="cpu")
    print(f"Cu{len(start)}, EMT, {T:.0f} K; target error of <E_pot> {args.target_mev} meV/atom; "
          f"network: model {model.info.get('version')} of {args.run}, trained on {n_training} labels\n")

    print(f"{'method':<28} {'accept':>6} {'<E_pot> (eV/atom)':>22} {'tau':>7} {'calls for target':>17} "
          f"{'+ training':>11}")
    rows = {}
    e = aimd(start, T, args.aimd_steps)
    tau, var, calls = calls_for(e, target)
    est = estimate(e)
    rows["AIMD Langevin"] = calls
    print(f"{'AIMD Langevin, 4 fs':<28} {'-':>6} {est.mean:>12.6f} ± {est.error:.6f} {tau:>7.1f} "
          f"{calls:>17.0f} {calls:>11.0f}")

    best = None
    for steps, dt in [(5, 2.0), (10, 2.0), (20, 2.0), (10, 4.0), (20, 4.0), (40, 4.0), (20, 6.0)]:
        records = plain_hmc(start, EMT(), T, trials=args.trials, md_steps=steps, timestep_fs=dt, seed=3,
                            proposal=model)
        e = np.array([r["e_chain"] for r in records[args.trials // 10 :]]) / len(start)
        acc = float(np.mean([r["accepted"] for r in records]))
        tau, var, calls = calls_for(e, target)
        est = estimate(e)
        name = f"SLHMC {steps} x {dt:g} fs ({steps * dt:g} fs)"
        rows[name] = calls
        print(f"{name:<28} {acc:>6.3f} {est.mean:>12.6f} ± {est.error:.6f} {tau:>7.1f} {calls:>17.0f} "
              f"{calls + n_training:>11.0f}")
        if best is None or calls < rows[best]:
            best = name
    aimd_best = "AIMD Langevin"
    print(f"\nAIMD needs {rows[aimd_best] / rows[best]:.1f}x the reference calls of the best "
          f"SLHMC ({best}) for the same error bar; {rows[aimd_best] / (rows[best] + n_training):.1f}x with "
          f"SLHMC's {n_training} training labels counted")


if __name__ == "__main__":
    main()
