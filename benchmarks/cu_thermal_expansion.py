"""Thermal expansion of EMT copper by NPT SLHMC, checked against EMT itself.

Runs ``slhmc run`` on ``examples/cu_npt/config_{300,600,900}K.toml`` (Cu32, P = 0 GPa), then
``slhmc analyze`` on the three runs (⟨V⟩/atom, α between the temperatures), and beside them two
checks computed with ASE's EMT directly:

(a) the static lattice constant a0 (an equation-of-state fit, and a cell relaxation with
    FrechetCellFilter), the T = 0 end of the expansion;
(b) an independent NPT sampler: ASE's isotropic MTK (Nosé-Hoover chain thermostat and barostat)
    molecular dynamics with EMT, the same 32 atoms, temperature and pressure. Its ⟨V⟩/atom error is
    the larger of the block-average errors with 10 and 20 blocks (the first ``--mtk-equilibration``
    ps discarded).

Prints one table: T, SLHMC ⟨V⟩/atom ± err, a = (4 ⟨V⟩/atom)^(1/3) ± err, MTK ⟨V⟩/atom ± err, and
z = (SLHMC − MTK)/σ of the difference; then the linear α = Δln⟨V⟩/(3ΔT) per temperature interval
from both, a0, and the EMT calls each method spent. ``--check-timestep T`` adds one MTK run at T
with half the time step, the size of the integrator's bias. Writes everything to OUT/results.json.

    OMP_NUM_THREADS=1 python benchmarks/cu_thermal_expansion.py --out runs/cu_expansion

About 13 minutes on one core (three SLHMC runs of 1-2 min, three MTK runs of ~2 min; 2.5 more with
``--check-timestep``). Finished SLHMC runs of the present configs and MTK runs of the same settings
found in OUT are reused (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.emt import EMT
from ase.eos import EquationOfState
from ase.filters import FrechetCellFilter
from ase.io import read
from ase.md.nose_hoover_chain import IsotropicMTKNPT
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.optimize import BFGS

from slhmc.config import load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cu_npt"
TEMPERATURES = (300, 600, 900)  # K, one config each
PRESSURE_GPA = 0.0
FCC_ATOMS = 4  # atoms per conventional fcc cell: a = (4 V/atom)^(1/3)
SLHMC = [sys.executable, "-m", "slhmc"]


class CountingEMT(EMT):
    """EMT that counts its energy/force evaluations."""

    calls = 0

    def calculate(self, *args, **kwargs) -> None:
        CountingEMT.calls += 1
        super().calculate(*args, **kwargs)


def run_slhmc(out: Path, fresh: bool) -> list[Path]:
    """The three ``slhmc run``s (skipped where OUT already holds a finished one); their directories."""
    runs = []
    for temperature in TEMPERATURES:
        config = EXAMPLE / f"config_{temperature}K.toml"
        run = out / f"slhmc_{temperature}K"
        runs.append(run)
        if run.exists() and not fresh and _finished(run, config):
            print(f"reusing {run}", flush=True)
            continue
        if run.exists():
            shutil.rmtree(run)
        start = time.perf_counter()
        subprocess.run([*SLHMC, "run", str(config), "--out", str(run), "--no-progress"], check=True)
        print(f"slhmc run {config.name}: {time.perf_counter() - start:.0f} s wall", flush=True)
    return runs


def _finished(run: Path, config: Path) -> bool:
    """``run`` holds all the trials of a run of ``config`` as it is now (so an edited config is rerun)."""
    trials = run / "trials.jsonl"
    if not (run / "config.json").exists() or not trials.exists():
        return False
    recorded = json.loads((run / "config.json").read_text())["config"]
    current = load_config(config).model_dump(mode="json")
    same = all(recorded.get(section) == current[section] for section in ("system", "reference", "hmc", "potential",
                                                                          "training"))
    return same and len(trials.read_text().splitlines()) >= current["hmc"]["trials"]


def analyze(runs: list[Path], out: Path) -> dict:
    """``slhmc analyze RUN_300K RUN_600K RUN_900K --out OUT/expansion``: printed, and its expansion.json."""
    expansion = out / "expansion"
    proc = subprocess.run([*SLHMC, "analyze", *map(str, runs), "--out", str(expansion)], check=True,
                          capture_output=True, text=True)
    print(proc.stdout, flush=True)
    return json.loads((expansion / "expansion.json").read_text())


def static_lattice_constant(structure: Atoms) -> dict:
    """EMT's T = 0 lattice constant (Å) of the fcc crystal: equation of state and cell relaxation."""
    atoms = structure.copy()
    n_cells = len(atoms) / FCC_ATOMS
    volumes, energies = [], []
    for scale in np.linspace(0.97, 1.03, 13):
        strained = atoms.copy()
        strained.set_cell(atoms.cell * scale, scale_atoms=True)
        strained.calc = EMT()
        volumes.append(strained.get_volume())
        energies.append(strained.get_potential_energy())
    v0, _, bulk_modulus = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    relaxed = atoms.copy()
    relaxed.calc = EMT()
    BFGS(FrechetCellFilter(relaxed), logfile=None).run(fmax=1e-6, steps=200)
    return {"eos_a0_A": float((v0 / n_cells) ** (1 / 3)), "eos_volume_A3_per_atom": float(v0 / len(atoms)),
            "bulk_modulus_GPa": float(bulk_modulus / units.GPa),
            "relaxed_a0_A": float((relaxed.get_volume() / n_cells) ** (1 / 3))}


def block_error(series: np.ndarray) -> float:
    """Error of the mean: the larger of the block-average errors with 10 and 20 blocks."""
    errors = []
    for blocks in (10, 20):
        means = np.array([b.mean() for b in np.array_split(series, blocks)])
        errors.append(means.std(ddof=1) / math.sqrt(blocks))
    return float(max(errors))


def run_mtk(structure: Atoms, temperature: float, timestep_fs: float, duration_ps: float,
            equilibration_ps: float, seed: int, cache: Path, fresh: bool) -> dict:
    """ASE's IsotropicMTKNPT with EMT at ``temperature`` (K) and P = PRESSURE_GPA: ⟨V⟩/atom (Å³)."""
    if cache.exists() and not fresh:
        result = json.loads(cache.read_text())
        if (result["timestep_fs"], result["duration_ps"], result["equilibration_ps"]) == (
                timestep_fs, duration_ps, equilibration_ps):
            print(f"reusing {cache}", flush=True)
            return result
    atoms = structure.copy()
    atoms.calc = CountingEMT()
    CountingEMT.calls = 0
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    # thermostat and barostat time scales of ~20 and ~100 steps at 5 fs: the volume oscillates with
    # a period of a few hundred fs, so a ~100 ps run has hundreds of independent volumes
    md = IsotropicMTKNPT(atoms, timestep_fs * units.fs, temperature_K=temperature,
                         pressure_au=PRESSURE_GPA * units.GPa, tdamp=100 * units.fs, pdamp=500 * units.fs)
    stride = 5
    volumes: list[float] = []
    md.attach(lambda: volumes.append(atoms.get_volume() / len(atoms)), interval=stride)
    steps = int(round(duration_ps * 1000 / timestep_fs))
    start = time.perf_counter()
    md.run(steps)
    seconds = time.perf_counter() - start
    series = np.array(volumes)[int(round(equilibration_ps * 1000 / (timestep_fs * stride))):]
    result = {"temperature_K": temperature, "timestep_fs": timestep_fs, "duration_ps": duration_ps,
              "equilibration_ps": equilibration_ps, "steps": steps, "emt_calls": CountingEMT.calls,
              "seconds": seconds, "samples": len(series),
              "volume_A3_per_atom": {"mean": float(series.mean()), "error": block_error(series),
                                     "std": float(series.std())}}
    cache.write_text(json.dumps(result, indent=2))
    print(f"MTK {temperature:g} K, {timestep_fs:g} fs, {duration_ps:g} ps: <V>/atom "
          f"{series.mean():.4f} ± {result['volume_A3_per_atom']['error']:.4f} Å³, {seconds:.0f} s", flush=True)
    return result


def lattice(v: dict) -> tuple[float, float]:
    """a = (4 V/atom)^(1/3) (Å) and its error from ⟨V⟩/atom ± err."""
    a = (FCC_ATOMS * v["mean"]) ** (1 / 3)
    return a, a * v["error"] / (3 * v["mean"])


def alpha_linear(v1: dict, v2: dict, dt: float) -> tuple[float, float]:
    """α = Δln⟨V⟩/(3ΔT) (1/K) and its error, the two means independent."""
    value = (math.log(v2["mean"]) - math.log(v1["mean"])) / (3 * dt)
    error = math.hypot(v1["error"] / v1["mean"], v2["error"] / v2["mean"]) / (3 * dt)
    return value, error


def table(expansion: dict, mtk: list[dict], static: dict, slhmc_calls: list[int], check: dict | None) -> list[str]:
    points = {round(p["temperature_K"]): p for p in expansion["points"]}
    lines = ["| T (K) | SLHMC <V>/atom (Å³) | SLHMC a (Å) | MTK MD <V>/atom (Å³) | MTK MD a (Å) | z |",
             "|---|---|---|---|---|---|"]
    slhmc_v, mtk_v = [], []
    for temperature, md in zip(TEMPERATURES, mtk, strict=True):
        v = points[temperature]["volume_A3_per_atom"]
        w = md["volume_A3_per_atom"]
        slhmc_v.append(v)
        mtk_v.append(w)
        z = (v["mean"] - w["mean"]) / math.hypot(v["error"], w["error"])
        a, ea = lattice(v)
        b, eb = lattice(w)
        lines.append(f"| {temperature} | {v['mean']:.4f} ± {v['error']:.4f} | {a:.5f} ± {ea:.5f} | "
                     f"{w['mean']:.4f} ± {w['error']:.4f} | {b:.5f} ± {eb:.5f} | {z:+.1f} |")
    lines += ["", "| T1 → T2 (K) | SLHMC α (10⁻⁶/K) | MTK MD α (10⁻⁶/K) | z |", "|---|---|---|---|"]
    for i in range(len(TEMPERATURES) - 1):
        dt = TEMPERATURES[i + 1] - TEMPERATURES[i]
        s, es = alpha_linear(slhmc_v[i], slhmc_v[i + 1], dt)
        m, em = alpha_linear(mtk_v[i], mtk_v[i + 1], dt)
        lines.append(f"| {TEMPERATURES[i]} → {TEMPERATURES[i + 1]} | {1e6 * s:.2f} ± {1e6 * es:.2f} | "
                     f"{1e6 * m:.2f} ± {1e6 * em:.2f} | {(s - m) / math.hypot(es, em):+.1f} |")
    lines += ["", f"static EMT a0: {static['eos_a0_A']:.5f} Å (equation of state, V/atom "
              f"{static['eos_volume_A3_per_atom']:.4f} Å³, B = {static['bulk_modulus_GPa']:.1f} GPa), "
              f"{static['relaxed_a0_A']:.5f} Å (FrechetCellFilter relaxation)",
              "EMT calls: SLHMC " + ", ".join(f"{t} K {c}" for t, c in zip(TEMPERATURES, slhmc_calls, strict=True))
              + "; MTK MD " + ", ".join(f"{m['temperature_K']:g} K {m['emt_calls']}" for m in mtk)]
    if check is not None:
        base = next(m for m in mtk if m["temperature_K"] == check["temperature_K"])
        v, w = base["volume_A3_per_atom"], check["volume_A3_per_atom"]
        z = (v["mean"] - w["mean"]) / math.hypot(v["error"], w["error"])
        lines.append(f"MTK time-step check at {check['temperature_K']:g} K: {base['timestep_fs']:g} fs "
                     f"{v['mean']:.4f} ± {v['error']:.4f}, {check['timestep_fs']:g} fs {w['mean']:.4f} ± "
                     f"{w['error']:.4f} Å³/atom (z {z:+.1f})")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/cu_expansion", help="directory for the runs and results.json")
    parser.add_argument("--mtk-timestep", type=float, default=5.0, help="fs")
    parser.add_argument("--mtk-duration", type=float, default=40.0, help="ps per temperature")
    parser.add_argument("--mtk-equilibration", type=float, default=4.0, help="ps discarded at the start")
    parser.add_argument("--check-timestep", type=float, default=None, metavar="T",
                        help="also run MTK at T (K) with half the time step")
    parser.add_argument("--fresh", action="store_true", help="redo runs found in --out")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = run_slhmc(out, args.fresh)
    slhmc_seconds = time.perf_counter() - start
    expansion = analyze(runs, out)
    slhmc_calls = [json.loads((run / "summary.json").read_text())["reference_calls"] for run in runs]
    structure = read(EXAMPLE / "cu32.xyz")
    static = static_lattice_constant(structure)
    mtk = [run_mtk(structure, t, args.mtk_timestep, args.mtk_duration, args.mtk_equilibration, seed=t,
                   cache=out / f"mtk_{t}K_{args.mtk_timestep:g}fs.json", fresh=args.fresh) for t in TEMPERATURES]
    check = None
    if args.check_timestep is not None:
        dt = args.mtk_timestep / 2
        check = run_mtk(structure, args.check_timestep, dt, args.mtk_duration, args.mtk_equilibration,
                        seed=int(args.check_timestep) + 1,
                        cache=out / f"mtk_{args.check_timestep:g}K_{dt:g}fs.json", fresh=args.fresh)
    lines = table(expansion, mtk, static, slhmc_calls, check)
    print("\n".join(lines))
    print(f"wall: SLHMC runs {slhmc_seconds:.0f} s (0 where reused), MTK MD "
          f"{sum(m['seconds'] for m in mtk):.0f} s (when run now or in the cached runs)")
    (out / "results.json").write_text(json.dumps({"expansion": expansion, "mtk": mtk, "mtk_timestep_check": check,
                                                  "static": static, "slhmc_reference_calls": slhmc_calls,
                                                  "table": lines}, indent=2))


if __name__ == "__main__":
    main()
