"""Would another network have accepted more? Refit one stage of a finished run offline with other
descriptor or network settings, and score each on the trials the run's own model served next.

The labels are the run's first ``--labels`` (those a refit at that point had); the score is the rms
error of the trajectory energy change, x = ΔE_ref − ΔE_ML between each trial's start state and its
proposal, in kT for the whole cell, over trials ``--trials FROM TO``, and the acceptance it
predicts, mean min(1, e^−x) — the quantity that sets SLHMC's acceptance. Every fit starts from
scratch with the same seed, 16 force atoms per label and ``--steps`` L-BFGS steps.

    python benchmarks/sio2_acceptance.py --out runs/sio2_quartz
    python benchmarks/refit_screen.py runs/sio2_quartz --labels 221 --trials 222 340 \\
        --variant cutoff=6 --variant cutoff=8,radial=14 --variant cutoff=8,radial=14,angular_cutoff=6

A variant is comma-separated ``key=value``: ``cutoff`` and ``angular_cutoff`` (Å), ``radial``
(Gaussians per element), ``hidden`` (widths joined by ``x``, e.g. ``25x25``), ``force_weight``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from ase.io import read

from slhmc.analysis.chain import delta_e_statistics
from slhmc.potential import training
from slhmc.potential.descriptors import N_RADIAL, DescriptorSpec
from slhmc.potential.network import BPNN


def parse_variant(text: str) -> dict:
    settings = {"cutoff": 6.0, "angular_cutoff": None, "radial": N_RADIAL, "hidden": (15, 15), "force_weight": 0.1}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in settings:
            raise SystemExit(f"unknown variant key {key!r}; known: {', '.join(settings)}")
        settings[key] = (tuple(int(h) for h in value.split("x")) if key == "hidden"
                         else int(value) if key == "radial" else float(value))
    return settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--labels", type=int, required=True, help="fit on the run's first N labels")
    ap.add_argument("--trials", type=int, nargs=2, required=True, metavar=("FROM", "TO"))
    ap.add_argument("--variant", action="append", default=[], help="settings; repeat for several")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)

    run = Path(args.run)
    frames = read(run / "dataset.extxyz", ":")
    records = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    temperature = json.loads((run / "config.json").read_text())["config"]["system"]["temperature"]
    start_of, state = {}, 0  # each trial's start state, as a label id
    for r in records:
        start_of[r["trial"]] = state
        if r["accepted"]:
            state = r["label_id"]
    scored = records[args.trials[0]:args.trials[1]]
    observed = np.mean([r["accepted"] for r in scored])
    print(f"{run}: fit on labels 0-{args.labels - 1}, scored on trials {args.trials[0]}-{args.trials[1] - 1} "
          f"(observed acceptance there {observed:.3f}), seed {args.seed}, {args.steps} steps")
    labels = [training.Label.from_atoms(frames[k], k) for k in range(args.labels)]
    elements = sorted({int(z) for z in frames[0].numbers})
    print("| variant | features | fit (s) | validation E (meV/atom) | validation F (meV/Å) | rms ΔE err (kT) "
          "| predicted acceptance |")
    print("|---|---|---|---|---|---|---|")
    for text in args.variant or [""]:
        v = parse_variant(text)
        spec = DescriptorSpec.default(elements, v["cutoff"], v["angular_cutoff"], n_radial=v["radial"])
        model = BPNN(spec, v["hidden"], "tanh")
        settings = training.FitSettings(force_weight=v["force_weight"], stress_weight=0.0, validation_fraction=0.1,
                                        max_steps=args.steps, patience=5, min_improvement=0.002, seed=args.seed,
                                        force_atoms=16, full_force_mb=0.0)
        t0 = time.perf_counter()
        store = training.LabelStore(model, settings.force_atoms, settings.full_force_mb)
        store.featurize_and_add(model, labels)
        metrics = training.fit(model, store, settings, warm_start=False)
        seconds = time.perf_counter() - t0

        def energy(k: int) -> float:
            a = frames[k]
            return model.evaluate(a.numbers, a.positions, a.cell.array, a.pbc).energy  # noqa: B023

        # the run's records with this network's energies at each trial's start and end point
        rescored = [{**r, "e_ml": energy(r["label_id"]), "e_ml_start": energy(start_of[r["trial"]])} for r in scored]
        d = delta_e_statistics(rescored, temperature)
        val = metrics["validation"]
        print(f"| {text or 'defaults'} | {spec.n_features} | {seconds:.0f} | {val['energy_rmse_mev_per_atom']:.3f} "
              f"| {val['force_rmse_mev_per_A']:.1f} | {d['delta_e_error_rms_kT']:.3f} "
              f"| {d['acceptance_predicted']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
