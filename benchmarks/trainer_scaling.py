"""Trainer memory and time against the number of labels: 96-atom Si/O cells (Si32O64).

For each size N (default 200, 1000, 2000) a fresh process featurizes N labels into the trainer's
label store, fits a model cold on the first half (the previous model of an SLHMC run), then
refits it warm on all N — what the trainer does on the chain's schedule — and prints peak RSS,
the store's bytes per label, featurisation and fit times, steps, whether the fit stopped on the
validation criterion, and validation errors. The labels are rattled and strained β-cristobalite
cells (2x2x1 of the 24-atom cubic cell) labelled by a fixed "teacher" network of another
architecture (3 x 24 softplus): smooth many-body energies with exact forces, instant to make,
so that thousands of labels cost nothing; the fit quality on real labels is
``--quality FILE.extxyz`` (e.g. a tblite run's dataset.extxyz), which compares force_atoms
settings on the same data.

    python benchmarks/trainer_scaling.py [--sizes 200 1000 2000] [--threads 2] [--force-atoms 16]
    python benchmarks/trainer_scaling.py --quality runs/sio2/dataset.extxyz --force-atoms 0 16 32
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from slhmc.config import PotentialConfig, TrainingConfig, trainer_settings
from slhmc.potential.descriptors import DescriptorSpec
from slhmc.potential.network import BPNN, Architecture
from slhmc.potential.training import FitSettings, Label, LabelStore, fit


def cristobalite96():
    from ase.spacegroup import crystal

    cell = crystal(["Si", "O"], basis=[(0, 0, 0), (0.125, 0.125, 0.125)], spacegroup=227,
                   cellpar=[7.16, 7.16, 7.16, 90, 90, 90])
    return cell.repeat((2, 2, 1))


def teacher_labels(n: int, seed: int = 0) -> list[Label]:
    start = cristobalite96()
    teacher = BPNN(DescriptorSpec.default([8, 14], 6.0), hidden=(24, 24, 24), activation="softplus")
    torch.manual_seed(1234)
    with torch.no_grad():
        for net in teacher.nets:
            for layer in net:
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.normal_(0.0, 1.2 / layer.weight.shape[1] ** 0.5)
        teacher.feature_mean.fill_(0.5)
    rng = np.random.default_rng(seed)
    labels = []
    for k in range(n):
        atoms = start.copy()
        atoms.set_cell(atoms.cell.array * (1 + rng.uniform(-0.02, 0.02)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, rng.uniform(0.03, 0.1), atoms.positions.shape)
        ev = teacher.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
        labels.append(Label(atoms.numbers, atoms.positions, atoms.cell.array.copy(), atoms.pbc, ev.energy,
                            ev.forces, k))
    return labels


def run_defaults(max_steps: int, seed: int) -> tuple[FitSettings, Architecture]:
    """The fit settings and network of a run with the default config, but ``max_steps``."""
    return trainer_settings(PotentialConfig(), TrainingConfig(max_steps=max_steps), seed)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_size(n: int, force_atoms: int, max_steps: int, full_force_mb: float) -> dict:
    t0 = time.perf_counter()
    labels = teacher_labels(n)
    rss_labels = peak_rss_mb()
    t_labels = time.perf_counter() - t0
    model = run_defaults(max_steps, 1)[1].build([8, 14])
    store = LabelStore(model, force_atoms, full_force_mb)
    t0 = time.perf_counter()
    store.featurize_and_add(model, labels)
    t_feat = time.perf_counter() - t0
    ids = [lab.label_id for lab in labels]
    print(f"{n} labels: featurized in {t_feat:.1f} s", file=sys.stderr, flush=True)

    def report(step: int, loss: float) -> None:
        print(f"  step {step}: validation loss {loss:.4g} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr,
              flush=True)

    t0 = time.perf_counter()
    cold = fit(model, store, run_defaults(max_steps, 1)[0], warm_start=False, label_ids=ids[: n // 2],
               progress=report)
    t0 = time.perf_counter()
    warm = fit(model, store, run_defaults(max_steps, 2)[0], warm_start=True, label_ids=ids,
               progress=report)
    return {
        "labels": n, "force_atoms": force_atoms, "threads": torch.get_num_threads(),
        "store_bytes_per_label": store.nbytes / n,
        "peak_rss_mb": peak_rss_mb(), "rss_after_labels_mb": rss_labels, "make_labels_s": t_labels,
        "featurize_s": t_feat, "cold_fit_s": cold["seconds"], "cold_steps": cold["steps"],
        "cold_converged": cold["converged"], "warm_fit_s": warm["seconds"], "warm_steps": warm["steps"],
        "warm_converged": warm["converged"],
        "val_energy_mev_per_atom": warm["validation"]["energy_rmse_mev_per_atom"],
        "val_force_mev_per_A": warm["validation"]["force_rmse_mev_per_A"],
    }


def quality(path: str, force_atoms: list[int], max_steps: int) -> None:
    """Same data, same split, several force_atoms: validation errors on all forces of held-out labels."""
    from ase.io import read

    from slhmc.potential.training import errors, featurize

    frames = read(path, ":")
    labels = [Label.from_atoms(a, k) for k, a in enumerate(frames)]
    rng = np.random.default_rng(0)
    test_ids = set(rng.choice(len(labels), size=max(len(labels) // 5, 1), replace=False).tolist())
    train = [lab for lab in labels if lab.label_id not in test_ids]
    test = [lab for lab in labels if lab.label_id in test_ids]
    elements = sorted({int(z) for lab in labels for z in lab.numbers})
    print(f"{path}: {len(train)} training labels, {len(test)} test labels of {len(labels[0].numbers)} atoms")
    print("| force_atoms | store MB/label | fit s | steps | test energy RMSE (meV/atom) | test force RMSE (meV/Å) |")
    print("|---|---|---|---|---|---|")
    for fa in force_atoms:
        settings, architecture = run_defaults(max_steps, 1)
        model = architecture.build(elements)
        store = LabelStore(model, fa, full_force_mb=0.0)  # the subset from the first label on
        store.featurize_and_add(model, train)
        m = fit(model, store, settings, warm_start=False)
        held = errors(model, [featurize(model, lab, 0) for lab in test])
        print(f"| {fa or 'all'} | {store.nbytes / len(train) / 1e6:.3f} | {m['seconds']:.1f} | {m['steps']} | "
              f"{held['energy_rmse_mev_per_atom']:.3f} | {held['force_rmse_mev_per_A']:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 2000])
    ap.add_argument("--force-atoms", type=int, nargs="+", default=[TrainingConfig().force_atoms])
    ap.add_argument("--full-force-mb", type=float, default=TrainingConfig().full_force_mb,
                    help="as training.full_force_mb")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=30)
    ap.add_argument("--quality", metavar="FILE", help="compare force_atoms on these labelled frames instead")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quality:
        quality(args.quality, args.force_atoms, args.max_steps)
        return
    if args.one:
        print(json.dumps(one_size(args.one, args.force_atoms[0], args.max_steps, args.full_force_mb)))
        return
    print("| labels | peak RSS (MB) | store (MB/label) | featurize (s) | cold fit on N/2 (s, steps) "
          "| warm refit on N (s, steps, converged) | validation (meV/atom, meV/Å) |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--threads", str(args.threads),
                              "--force-atoms", str(args.force_atoms[0]), "--max-steps", str(args.max_steps),
                               "--full-force-mb", str(args.full_force_mb)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {n} | {r['peak_rss_mb']:.0f} | {r['store_bytes_per_label'] / 1e6:.3f} | {r['featurize_s']:.1f} | "
              f"{r['cold_fit_s']:.1f}, {r['cold_steps']} | {r['warm_fit_s']:.1f}, {r['warm_steps']}, "
              f"{r['warm_converged']} | {r['val_energy_mev_per_atom']:.3f}, {r['val_force_mev_per_A']:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
