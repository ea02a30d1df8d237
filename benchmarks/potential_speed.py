"""Energy + forces per MD step: slhmc's BPNN against TorchANI (AEVComputer + per-element MLPs).

Both sides get the same cutoffs (radial 6.0 Å, angular 4.5 Å), a comparable number of features
(8 radial per element; 8 angular per element pair: 16 for Cu, 40 for SiO2 on both sides), the same
2x15 tanh networks (one per element), the same dtype and thread count; TorchANI gets the fastest of
its CPU neighbour lists (its Verlet cell list included). Both walk the same MD-like sequence of
positions (ballistic 300-K thermal velocities, 2 fs per step, back to the start every 200 steps),
so that neighbour lists kept across steps pay as they would in MD. Timings are interleaved (ours,
theirs, ours, ...) so machine noise hits both alike; the figure that matters is the ratio.

"slhmc" is the MD path (``FastPotential``: compiled descriptor, analytic forces, Verlet list), median
and fastest call (the fastest is close to what an idle core gives);
"plain" is ``BPNN.evaluate`` (torch descriptor, autograd forces, fresh neighbour list each call).
Also times one fit of ``--fit-structures`` Cu32 EMT labels.

    python benchmarks/potential_speed.py [--threads 1] [--dtype float64] [--rounds 15] [--fit-structures 1000]

Needs the ``bench`` extra (torchani).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase import Atoms, units  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.io import read  # noqa: E402
from ase.md.velocitydistribution import thermalize_momenta  # noqa: E402

from slhmc.potential.descriptors import DescriptorSpec  # noqa: E402
from slhmc.potential.fast import FastPotential  # noqa: E402
from slhmc.potential.network import BPNN  # noqa: E402

# the networks both sides get (the module docstring): fixed here, not the config's defaults
RADIAL_CUTOFF, ANGULAR_CUTOFF = 6.0, 4.5
HIDDEN, ACTIVATION = (15, 15), "tanh"
QUARTZ72 = Path(__file__).resolve().parent.parent / "examples" / "sio2_quartz" / "quartz72.extxyz"
TRAJECTORY_STEPS = 200


def cu(n_cells: tuple[int, int, int]) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n_cells)
    atoms.rattle(0.05, seed=1)
    return atoms


def quartz(n_cells: tuple[int, int, int]) -> Atoms:
    atoms = read(QUARTZ72).repeat(n_cells)
    atoms.rattle(0.05, seed=1)
    return atoms


def trajectory(atoms: Atoms, temperature_K: float = 300.0, timestep_fs: float = 2.0) -> list[np.ndarray]:
    """Positions of TRAJECTORY_STEPS ballistic steps with thermal velocities: MD-like displacements."""
    a = atoms.copy()
    thermalize_momenta(a, temperature_K, rng=np.random.default_rng(0))
    velocity = a.get_velocities()
    return [atoms.positions + k * timestep_fs * units.fs * velocity for k in range(TRAJECTORY_STEPS)]


class TorchANIPotential(torch.nn.Module):
    """TorchANI's AEVComputer with one 2x15 tanh network per element: what a TorchANI user would run."""

    def __init__(self, neighborlist: str, n_species: int, dtype: torch.dtype) -> None:
        super().__init__()
        from torchani.aev import AEVComputer

        self.aev = AEVComputer.from_constants(
            radial_cutoff=RADIAL_CUTOFF,
            angular_cutoff=ANGULAR_CUTOFF,
            radial_eta=16.0,
            radial_shifts=torch.linspace(1.0, RADIAL_CUTOFF - 0.5, 8).tolist(),
            angular_eta=8.0,
            angular_zeta=32.0,
            angular_shifts=[1.5, 3.0],
            sections=torch.linspace(0.2, 2.9, 4).tolist(),
            num_species=n_species,
            neighborlist=neighborlist,
        )
        self.nets = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(self.aev.out_dim, 15), torch.nn.Tanh(), torch.nn.Linear(15, 15),
                                torch.nn.Tanh(), torch.nn.Linear(15, 1))
            for _ in range(n_species))
        self.to(dtype)

    def energy_forces(self, species: torch.Tensor, coords: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor):
        coords = coords.detach().requires_grad_(True)
        aev = self.aev(species, coords, cell, pbc)[0]
        energy = coords.new_zeros(())
        for k, net in enumerate(self.nets):
            (rows,) = (species[0] == k).nonzero(as_tuple=True)
            energy = energy + net(aev.index_select(0, rows)).sum()
        (grad,) = torch.autograd.grad(energy, coords)
        return energy.detach(), -grad


def time_call(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Walker:
    """Calls ``step(positions)`` along the trajectory, one step further each call."""

    def __init__(self, step, path: list[np.ndarray]) -> None:
        self.step, self.path, self.k = step, path, 0

    def __call__(self) -> None:
        self.step(self.path[self.k % len(self.path)])
        self.k += 1


def bench_step(atoms: Atoms, dtype: torch.dtype, rounds: int) -> dict:
    elements = sorted(set(atoms.numbers.tolist()))
    path = trajectory(atoms)
    model = BPNN(DescriptorSpec.default(elements, RADIAL_CUTOFF, ANGULAR_CUTOFF), HIDDEN, ACTIVATION, dtype=dtype)
    fast = FastPotential(model)
    numbers, cell_np, pbc_np = atoms.numbers, atoms.cell.array, atoms.pbc
    ours = Walker(lambda r: fast.evaluate(numbers, r, cell_np, pbc_np), path)
    plain = Walker(lambda r: model.evaluate(numbers, r, cell_np, pbc_np), path)

    species = torch.tensor([[elements.index(z) for z in numbers]])
    cell = torch.tensor(cell_np, dtype=dtype)
    pbc = torch.tensor([True, True, True])
    coords = [torch.tensor(r, dtype=dtype).unsqueeze(0) for r in path]
    peers = {}
    for nl in ("cell_list", "verlet_cell_list", "all_pairs"):
        try:
            peer = TorchANIPotential(nl, len(elements), dtype)
            walker = Walker(lambda r, p=peer: p.energy_forces(species, r, cell, pbc), coords)
            walker()
            peers[nl] = (walker, min(time_call(walker) for _ in range(5)))
        except Exception as err:  # a neighbour list this build does not support
            print(f"  (torchani {nl}: {type(err).__name__}: {err})")
    best_nl = min(peers, key=lambda k: peers[k][1])
    theirs = peers[best_nl][0]
    ours(), plain()  # first calls: compilation, caches
    t_ours, t_peer, t_plain = [], [], []
    builds0, steps0 = fast.neighbors.builds, ours.k
    for r in range(rounds):  # interleaved
        t_ours += [time_call(ours) for _ in range(5)]
        t_peer += [time_call(theirs) for _ in range(5)]
        if r % 3 == 0 or len(atoms) < 100:
            t_plain.append(time_call(plain))
    return {"atoms": len(atoms), "ours_ms": 1e3 * statistics.median(t_ours), "ours_min_ms": 1e3 * min(t_ours),
            "torchani_ms": 1e3 * statistics.median(t_peer), "plain_ms": 1e3 * statistics.median(t_plain),
            "torchani_neighborlist": best_nl,
            "steps_per_build": (ours.k - steps0) / max(fast.neighbors.builds - builds0, 1)}


def bench_fit(n_structures: int, dtype: torch.dtype) -> dict:
    from slhmc.config import PotentialConfig, TrainingConfig, trainer_settings
    from slhmc.potential.training import featurize, fit
    from slhmc.validation import rattled_emt_labels

    labels = rattled_emt_labels(n_structures, seed=0)
    model = BPNN(DescriptorSpec.default([29], RADIAL_CUTOFF, ANGULAR_CUTOFF), HIDDEN, ACTIVATION, dtype=dtype)
    settings, _ = trainer_settings(PotentialConfig(), TrainingConfig(max_steps=30), seed=0)  # a run's, 30 steps
    t0 = time.perf_counter()
    items = [featurize(model, lab) for lab in labels]
    t_feat = time.perf_counter() - t0
    metrics = fit(model, items, settings, warm_start=False)
    return {"structures": n_structures, "featurize_s": t_feat, "fit_s": metrics["seconds"],
            "steps": metrics["steps"], "validation": metrics["validation"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds of 5 calls each")
    p.add_argument("--sizes", choices=["small", "large", "all"], default="all")
    p.add_argument("--fit-structures", type=int, default=1000, help="0 to skip the fit timing")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.dtype}, device cpu, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    cases = [("Cu fcc", cu((2, 2, 4)), "small"), ("Cu fcc", cu((4, 4, 8)), "large"),
             ("SiO2 quartz", quartz((1, 1, 1)), "small"), ("SiO2 quartz", quartz((2, 2, 2)), "large")]
    print(f"{'system':<12} {'atoms':>6} {'slhmc ms':>9} {'(fastest)':>9} {'TorchANI ms':>12} {'ratio':>6} "
          f"{'plain ms':>9} {'steps/list':>10}  TorchANI neighbour list")
    for name, atoms, size in cases:
        if args.sizes not in ("all", size):
            continue
        r = bench_step(atoms, dtype, args.rounds)
        print(f"{name:<12} {r['atoms']:>6} {r['ours_ms']:>9.2f} {r['ours_min_ms']:>9.2f} {r['torchani_ms']:>12.2f} "
              f"{r['ours_ms'] / r['torchani_ms']:>6.2f} {r['plain_ms']:>9.2f} {r['steps_per_build']:>10.1f}  "
              f"{r['torchani_neighborlist']}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if args.fit_structures:
        f = bench_fit(args.fit_structures, dtype)
        v = f["validation"]
        print(f"fit of {f['structures']} Cu32 labels: featurize {f['featurize_s']:.1f} s, "
              f"L-BFGS {f['fit_s']:.1f} s ({f['steps']} steps); validation "
              f"{v['energy_rmse_mev_per_atom']:.3f} meV/atom, {v['force_rmse_mev_per_A']:.1f} meV/Å")


if __name__ == "__main__":
    main()
