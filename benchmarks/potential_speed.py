"""Energy + forces per MD step: slhmc's BPNN against TorchANI (AEVComputer + per-element MLPs).

Both sides get the same cutoffs (radial 6.0 Å, angular 4.5 Å), a comparable number of features
(8 radial per element; 8 angular per element pair), the same 2x15 tanh networks, the same dtype
and thread count; TorchANI gets its fastest CPU neighbour list of the ones tried. Timings are
interleaved (ours, theirs, ours, ...) so machine noise hits both alike; the figure that matters
is the ratio. Also times one fit of ``--fit-structures`` Cu32 EMT labels.

    python benchmarks/potential_speed.py [--threads 1] [--dtype float64] [--fit-structures 1000]

Needs the ``bench`` extra (torchani).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")

import torch  # noqa: E402
from ase.build import bulk  # noqa: E402

from slhmc.potential.descriptors import DescriptorSpec  # noqa: E402
from slhmc.potential.network import BPNN  # noqa: E402

RADIAL_CUTOFF, ANGULAR_CUTOFF = 6.0, 4.5


def structure(n_cells: tuple[int, int, int]):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n_cells)
    atoms.rattle(0.05, seed=1)
    return atoms


class TorchANIPotential(torch.nn.Module):
    """TorchANI's AEVComputer with a 2x15 tanh network: what a TorchANI user would run."""

    def __init__(self, neighborlist: str, dtype: torch.dtype) -> None:
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
            num_species=1,
            neighborlist=neighborlist,
        )
        self.net = torch.nn.Sequential(torch.nn.Linear(self.aev.out_dim, 15), torch.nn.Tanh(),
                                       torch.nn.Linear(15, 15), torch.nn.Tanh(), torch.nn.Linear(15, 1))
        self.to(dtype)

    def energy_forces(self, coords: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor):
        coords = coords.detach().requires_grad_(True)
        species = torch.zeros(1, coords.shape[1], dtype=torch.long)
        energy = self.net(self.aev(species, coords, cell, pbc)).sum()
        (grad,) = torch.autograd.grad(energy, coords)
        return energy.detach(), -grad


def time_calls(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_step(n_cells: tuple[int, int, int], dtype: torch.dtype, rounds: int) -> dict:
    atoms = structure(n_cells)
    ours = BPNN(DescriptorSpec.default([29], RADIAL_CUTOFF, ANGULAR_CUTOFF), (15, 15), dtype=dtype)
    coords = torch.tensor(atoms.positions, dtype=dtype).unsqueeze(0)
    cell = torch.tensor(atoms.cell.array, dtype=dtype)
    pbc = torch.tensor([True, True, True])

    def run_ours():
        ours.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)

    peers = {}
    for nl in ("cell_list", "all_pairs"):
        try:
            model = TorchANIPotential(nl, dtype)
            model.energy_forces(coords, cell, pbc)
            peers[nl] = model
        except Exception as err:  # a neighbour list this build does not support
            print(f"  (torchani {nl}: {type(err).__name__}: {err})")
    run_ours()
    best_nl = min(peers, key=lambda k: min(time_calls(lambda m=peers[k]: m.energy_forces(coords, cell, pbc), 3)))
    peer = peers[best_nl]
    t_ours, t_peer = [], []
    for _ in range(rounds):  # interleaved
        t_ours += time_calls(run_ours, 3)
        t_peer += time_calls(lambda: peer.energy_forces(coords, cell, pbc), 3)
    return {"atoms": len(atoms), "ours_ms": 1e3 * statistics.median(t_ours),
            "torchani_ms": 1e3 * statistics.median(t_peer), "torchani_neighborlist": best_nl}


def bench_fit(n_structures: int, dtype: torch.dtype) -> dict:
    from slhmc.potential.training import FitSettings, featurize, fit
    from slhmc.validation import rattled_emt_labels

    labels = rattled_emt_labels(n_structures, seed=0)
    model = BPNN(DescriptorSpec.default([29], RADIAL_CUTOFF, ANGULAR_CUTOFF), (15, 15), dtype=dtype)
    t0 = time.perf_counter()
    items = [featurize(model, lab) for lab in labels]
    t_feat = time.perf_counter() - t0
    metrics = fit(model, items, FitSettings(max_steps=30, seed=0), warm_start=False)
    return {"structures": n_structures, "featurize_s": t_feat, "fit_s": metrics["seconds"],
            "steps": metrics["steps"], "validation": metrics["validation"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--fit-structures", type=int, default=1000, help="0 to skip the fit timing")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.dtype}, device cpu")
    print(f"{'atoms':>6} {'slhmc ms':>9} {'TorchANI ms':>12} {'ratio':>6}  TorchANI neighbour list")
    for cells in [(2, 2, 4), (4, 4, 8)]:
        r = bench_step(cells, dtype, args.rounds)
        print(f"{r['atoms']:>6} {r['ours_ms']:>9.2f} {r['torchani_ms']:>12.2f} "
              f"{r['ours_ms'] / r['torchani_ms']:>6.2f}  {r['torchani_neighborlist']}")
    if args.fit_structures:
        f = bench_fit(args.fit_structures, dtype)
        v = f["validation"]
        print(f"fit of {f['structures']} Cu32 labels: featurize {f['featurize_s']:.1f} s, "
              f"L-BFGS {f['fit_s']:.1f} s ({f['steps']} steps); validation "
              f"{v['energy_rmse_mev_per_atom']:.3f} meV/atom, {v['force_rmse_mev_per_A']:.1f} meV/Å")


if __name__ == "__main__":
    main()
