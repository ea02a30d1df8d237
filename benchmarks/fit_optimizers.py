"""Why the trainer uses full-batch L-BFGS: validation error against wall time, L-BFGS vs Adam.

Both fit the same Cu32 EMT labels (rattled, strained fcc) with the same network, loss (energy per
atom and forces, force weight 0.1) and validation split; Adam gets a learning-rate schedule
(exponential decay 1e-2 -> 1e-4) and mini-batches of 16 structures, as in TorchANI's and n2p2's
usual recipes. Adam gets the wall time L-BFGS took with the trainer's defaults.

    python benchmarks/fit_optimizers.py [--labels 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from slhmc.config import PotentialConfig, TrainingConfig, trainer_settings
from slhmc.potential.network import BPNN
from slhmc.potential.training import (
    _Batch,
    errors,
    featurize,
    fit,
    initialise_normalisation,
    predict,
    split,
)
from slhmc.validation import rattled_emt_labels


def adam_fit(model: BPNN, train, val, seconds: float, force_weight: float) -> dict:
    initialise_normalisation(model, train)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.995)
    rng = np.random.default_rng(0)
    t0, epochs, best = time.perf_counter(), 0, None
    while time.perf_counter() - t0 < seconds:
        for chunk in np.array_split(rng.permutation(len(train)), max(1, len(train) // 16)):
            b = _Batch.of([train[k] for k in chunk])
            energy, forces = predict(model, b, create_graph=True)
            loss = ((energy - b.energy) / b.n_atoms).pow(2).mean() + force_weight * (forces - b.forces).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if sched.get_last_lr()[0] > 1e-4:
            sched.step()
        epochs += 1
        e = errors(model, val)
        if best is None or e["force_rmse_mev_per_A"] < best["force_rmse_mev_per_A"]:
            best = e
    return {**best, "epochs": epochs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=int, default=200)
    p.add_argument("--seconds", type=float, default=0.0, help="Adam's budget (default: L-BFGS's time)")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = rattled_emt_labels(args.labels, seed=0)
    settings, architecture = trainer_settings(PotentialConfig(), TrainingConfig(), seed=0)  # the trainer's defaults
    torch.manual_seed(0)
    model = architecture.build([29])
    items = [featurize(model, lab) for lab in data]
    train_pos, val_pos = split([it.label_id for it in items], 0.1, 0)
    train, val = [items[k] for k in train_pos], [items[k] for k in val_pos]

    metrics = fit(model, items, settings, warm_start=False)
    lbfgs = {**metrics["validation"], "steps": metrics["steps"], "seconds": metrics["seconds"]}
    budget = args.seconds or lbfgs["seconds"]
    torch.manual_seed(0)
    adam = adam_fit(architecture.build([29]), train, val, budget, settings.force_weight)
    print(f"{args.labels} Cu32 EMT labels, {len(val)} for validation, 1 thread")
    print(f"L-BFGS ({lbfgs['steps']} x 10 iterations, {lbfgs['seconds']:.0f} s): "
          f"{lbfgs['energy_rmse_mev_per_atom']:.3f} meV/atom, {lbfgs['force_rmse_mev_per_A']:.1f} meV/Å")
    print(f"Adam ({adam['epochs']} epochs, same {budget:.0f} s): "
          f"{adam['energy_rmse_mev_per_atom']:.3f} meV/atom, {adam['force_rmse_mev_per_A']:.1f} meV/Å")


if __name__ == "__main__":
    main()
