"""Fit quality, time and memory of the present trainer against the one before it (issue 13).

The previous trainer is ``potential/training.py`` as it was before commit 166e78e (the commit that
made the trainer bounded in memory: analytic descriptor Jacobian stored in float32, chunks,
force-atom subsets, a new validation split and early-stopping rule). It is read from git history
with ``git show 166e78e^:potential/training.py`` and loaded into a temporary module inside
``slhmc.potential`` (so that its relative imports get today's descriptors and network, which it
is compatible with), so this benchmark needs a git checkout of the repository, not an installed
package. Both trainers fit the same network (today's default ``[potential]``: 2 x 15 tanh, 6 Å
cutoff) from the same initial weights (both seed torch with the fit seed before resetting them).

For every dataset and seed, the labels are split into a training set and a held-out set by the
seed (the same two sets for both trainers); each trainer makes its own validation split of the
training set (``validation_fraction`` 0.1 for both) and uses it for its early stopping, as it
would in a run. Both fit energies and forces only (a label's stress, where the present trainer
could use one, is dropped: the previous trainer has no stress term). The same ``force_weight``
(0.1) and the same budget of ``--max-steps`` L-BFGS outer steps of 10 iterations (default 60,
today's ``training.max_steps``) are given to both; the early-stopping rule is each trainer's
own (previous: 4 steps without a 0.01 % improvement; present: ``training.patience`` 3 steps
without ``training.min_improvement`` 0.5 %). The held-out errors are computed by the network
itself (``BPNN.evaluate``, autograd forces on every atom), not by either trainer. Each fit runs
in its own process, so peak RSS is per fit (it includes the labels and torch, the same for both).

Datasets:

- ``cu32``: 150 EMT labels of fcc Cu, 2x2x2 conventional cells (32 atoms) strained by up to
  ±1 % and rattled by 0.08 Å per component (``slhmc.validation.rattled_emt_labels``); 120 fitted,
  30 held out.
- ``quartz``: 160 α-quartz cells (``examples/sio2_quartz/quartz72.extxyz``, 72 atoms), strained
  by up to ±1 % and rattled by a per-cell amplitude of 0.02-0.08 Å, labelled by GFN1-xTB
  (tblite; ~1-2 s a cell on one core), cached in ``--quartz-labels``; 128 fitted, 32 held out.

Variants of the present trainer, for finding where a difference comes from (``--trainers``):
``present-oldstop`` (the previous early-stopping rule: patience 4, 0.01 %), ``present-f64``
(Jacobian kept in float64), ``present-nostop`` (no early stopping: the whole budget, best
validation weights kept), ``present-oldsplit`` (the previous validation split function).

    OMP_NUM_THREADS=1 python benchmarks/trainer_vs_previous.py [--datasets cu32 quartz] [--seeds 0 1 2]
        [--trainers previous present] [--max-steps 60] [--quartz-labels /tmp/quartz_labels.extxyz]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
PREVIOUS_REVISION = "166e78e^"  # the parent of the commit that replaced the trainer
QUARTZ72 = ROOT / "examples" / "sio2_quartz" / "quartz72.extxyz"
SIZES = {"cu32": (120, 30), "quartz": (128, 32)}  # (fitted, held out)
TRAINERS = ("previous", "present", "present-oldstop", "present-f64", "present-nostop", "present-oldsplit")


def previous_trainer() -> types.ModuleType:
    """The trainer before commit 166e78e, from ``git show``, as module ``slhmc.potential._training_previous``."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{PREVIOUS_REVISION}:potential/training.py"],
                         check=True, capture_output=True, text=True).stdout
    name = "slhmc.potential._training_previous"
    module = types.ModuleType(name)
    module.__package__ = "slhmc.potential"
    sys.modules[name] = module  # dataclasses look their module up while the source runs
    exec(compile(src, f"git:{PREVIOUS_REVISION}:potential/training.py", "exec"), module.__dict__)
    return module


def cu32_labels(n: int) -> list:
    from slhmc.validation import rattled_emt_labels

    return rattled_emt_labels(n, seed=2026, repeat=(2, 2, 2), rattle_A=0.08, strain=0.01)


def quartz_labels(n: int, path: Path) -> list:
    """``n`` rattled and strained α-quartz cells labelled by GFN1-xTB, made once and cached in ``path``."""
    from ase.io import read, write

    from slhmc.potential.training import Label

    if not path.exists() or len(read(path, ":")) < n:
        from tblite.ase import TBLite

        start = read(QUARTZ72)
        rng = np.random.default_rng(2026)
        frames = []
        t0 = time.perf_counter()
        for k in range(n):
            atoms = start.copy()
            atoms.set_cell(atoms.cell.array * (1 + rng.uniform(-0.01, 0.01)), scale_atoms=True)
            atoms.positions += rng.normal(0.0, rng.uniform(0.02, 0.08), atoms.positions.shape)
            atoms.calc = TBLite(method="GFN1-xTB", verbosity=0)
            atoms.get_potential_energy()
            frames.append(atoms)
            print(f"quartz label {k + 1}/{n}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        tmp = path.with_suffix(".partial.extxyz")
        write(tmp, frames)
        tmp.replace(path)
    return [Label.from_atoms(a, label_id=k) for k, a in enumerate(read(path, f":{n}"))]


def labels_of(dataset: str, quartz_path: Path) -> list:
    n = sum(SIZES[dataset])
    return cu32_labels(n) if dataset == "cu32" else quartz_labels(n, quartz_path)


def held_out_split(n: int, n_held: int, seed: int) -> tuple[list[int], list[int]]:
    """Positions of the fitted and the held-out labels: a permutation by ``seed``."""
    order = np.random.default_rng([seed, 13]).permutation(n)
    return sorted(order[n_held:].tolist()), sorted(order[:n_held].tolist())


def new_model(elements: list[int]):
    from slhmc.config import PotentialConfig
    from slhmc.potential.descriptors import default_angular_cutoff
    from slhmc.potential.network import Architecture

    p = PotentialConfig()
    return Architecture(p.cutoff, default_angular_cutoff(p.cutoff, p.angular_cutoff), tuple(p.hidden),
                        p.activation).build(elements)


def present_settings(seed: int, max_steps: int, force_weight: float, **overrides):
    """Today's FitSettings from the default ``[training]`` config (any field it has), with ``overrides``."""
    from dataclasses import fields

    from slhmc.config import TrainingConfig
    from slhmc.potential.training import FitSettings

    config = TrainingConfig(max_steps=max_steps, force_weight=force_weight).model_dump()
    values = {f.name: config[f.name] for f in fields(FitSettings) if f.name in config}
    if "stress_weight" in values:
        values["stress_weight"] = 0.0  # the previous trainer fits energies and forces only
    values.update(seed=seed, **overrides)
    return FitSettings(**values)


def held_out_errors(model, labels: list) -> dict:
    """Energy RMSE (meV/atom) and force RMSE over all components (meV/Å) of ``model`` on ``labels``."""
    de, df = [], []
    for lab in labels:
        ev = model.evaluate(lab.numbers, lab.positions, lab.cell, lab.pbc)
        de.append((ev.energy - lab.energy) / len(lab.numbers))
        df.append((ev.forces - lab.forces).ravel())
    return {"energy_mev_per_atom": 1e3 * float(np.sqrt(np.mean(np.square(de)))),
            "force_mev_per_A": 1e3 * float(np.sqrt(np.mean(np.square(np.concatenate(df)))))}


def one_fit(dataset: str, trainer: str, seed: int, max_steps: int, force_weight: float, quartz_path: Path) -> dict:
    """Fit one model in this process; returns held-out errors, times, steps and peak RSS (MB)."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    labels = labels_of(dataset, quartz_path)
    fit_pos, held_pos = held_out_split(len(labels), SIZES[dataset][1], seed)
    train = [labels[k] for k in fit_pos]
    held = [labels[k] for k in held_pos]
    for k, lab in enumerate(train):
        lab.label_id = k  # in fit order: both trainers split validation by position
        if getattr(lab, "stress", None) is not None:
            lab.stress = None  # the same objective for both: energies and forces
    model = new_model(sorted(set(int(z) for z in labels[0].numbers)))
    t0 = time.perf_counter()
    if trainer == "previous":
        old = previous_trainer()
        items = [old.featurize(model, lab) for lab in train]
        t1 = time.perf_counter()
        metrics = old.fit(model, items, old.FitSettings(force_weight=force_weight, validation_fraction=0.1,
                                                        max_steps=max_steps, seed=seed), warm_start=False)
        converged = metrics["steps"] < max_steps
    else:
        from slhmc.potential import training as present

        overrides: dict = {}
        if trainer == "present-oldstop":
            overrides = {"patience": 4, "min_improvement": 1e-4}
        elif trainer == "present-nostop":
            overrides = {"patience": max_steps + 1}
        elif trainer == "present-f64":
            present.JACOBIAN_DTYPE = torch.float64
        elif trainer == "present-oldsplit":
            old = previous_trainer()
            present.split = lambda n, fraction, s: old.split(list(range(n)), fraction, s)
        settings = present_settings(seed, max_steps, force_weight, **overrides)
        store = present.LabelStore(model, settings.force_atoms, settings.full_force_mb)
        store.featurize_and_add(model, train)
        t1 = time.perf_counter()
        metrics = present.fit(model, store, settings, warm_start=False)
        converged = metrics["converged"]
    t2 = time.perf_counter()
    ref = np.concatenate([lab.forces.ravel() for lab in held])
    return {"dataset": dataset, "trainer": trainer, "seed": seed, **held_out_errors(model, held),
            "validation": metrics["validation"], "steps": metrics["steps"], "stopped_early": bool(converged),
            "featurize_s": round(t1 - t0, 1), "fit_s": round(t2 - t1, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "n_fit": len(train), "n_held": len(held), "rms_force_mev_per_A": 1e3 * float(np.sqrt(np.mean(ref**2)))}


def _sd(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if len(x) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["cu32", "quartz"], choices=sorted(SIZES))
    ap.add_argument("--trainers", nargs="+", default=["previous", "present"], choices=TRAINERS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--max-steps", type=int, default=60, help="L-BFGS outer steps (10 iterations each), both trainers")
    ap.add_argument("--force-weight", type=float, default=0.1)
    ap.add_argument("--quartz-labels", type=Path, default=Path("/tmp/quartz_labels.extxyz"),
                    help="cache of the GFN1-xTB labels (made on first use; needs tblite)")
    ap.add_argument("--json", type=Path, help="also append every row to this file (one JSON object a line)")
    ap.add_argument("--one", nargs=3, metavar=("DATASET", "TRAINER", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        row = one_fit(args.one[0], args.one[1], int(args.one[2]), args.max_steps, args.force_weight,
                      args.quartz_labels)
        print(json.dumps(row))
        return
    if "quartz" in args.datasets:
        labels_of("quartz", args.quartz_labels)  # label once, before any timed fit
    header = ("| dataset | trainer | seed | held-out energy RMSE (meV/atom) | held-out force RMSE (meV/Å) | steps "
              "(stopped early) | featurize (s) | fit (s) | peak RSS (MB) |")
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    rows = []
    for dataset in args.datasets:
        for seed in args.seeds:
            for trainer in args.trainers:
                out = subprocess.run([sys.executable, __file__, "--one", dataset, trainer, str(seed),
                                      "--max-steps", str(args.max_steps), "--force-weight", str(args.force_weight),
                                      "--quartz-labels", str(args.quartz_labels)],
                                     check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                rows.append(r)
                if args.json:
                    with args.json.open("a") as fh:
                        fh.write(json.dumps(r) + "\n")
                print(f"| {dataset} | {trainer} | {seed} | {r['energy_mev_per_atom']:.3f} | {r['force_mev_per_A']:.2f} "
                      f"| {r['steps']} ({'yes' if r['stopped_early'] else 'no'}) | {r['featurize_s']} | {r['fit_s']} "
                      f"| {r['peak_rss_mb']} |", flush=True)
    print("\nmean ± sample std over seeds (rms reference force on the held-out labels in brackets):")
    for dataset in args.datasets:
        for trainer in args.trainers:
            rs = [r for r in rows if r["dataset"] == dataset and r["trainer"] == trainer]
            e = np.array([r["energy_mev_per_atom"] for r in rs])
            f = np.array([r["force_mev_per_A"] for r in rs])
            print(f"{dataset:7s} {trainer:17s} energy {e.mean():.3f} ± {_sd(e):.3f} meV/atom, force {f.mean():.2f} ± "
                  f"{_sd(f):.2f} meV/Å  [{np.mean([r['rms_force_mev_per_A'] for r in rs]):.0f} meV/Å], "
                  f"fit {np.mean([r['fit_s'] for r in rs]):.0f} s, peak RSS {max(r['peak_rss_mb'] for r in rs)} MB")


if __name__ == "__main__":
    main()
