"""``slhmc analyze DIR``: acceptance and model error of a run, from its outputs (also while it runs)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def read_trials(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "trials.jsonl"
    trials = []
    for line in path.read_text().splitlines():
        try:
            trials.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            break
    return trials


def summarize(trials: list[dict]) -> dict:
    """Acceptance (overall, last half, per model) and the ML-vs-reference error of proposals."""
    n = len(trials)
    half = trials[n // 2 :]
    per_model: dict[int, dict] = {}
    for t in trials:
        m = per_model.setdefault(t["model"], {"trials": 0, "accepted": 0, "sq_err": 0.0})
        m["trials"] += 1
        m["accepted"] += bool(t["accepted"])
        m["sq_err"] += ((t["e_ref"] - t["e_ml"]) / t["n_atoms"]) ** 2
    models = {
        str(v): {
            "trials": m["trials"],
            "acceptance": m["accepted"] / m["trials"],
            "ml_error_rms_mev_per_atom": 1e3 * math.sqrt(m["sq_err"] / m["trials"]),
        }
        for v, m in sorted(per_model.items())
    }
    e_chain = [t["e_chain"] / t["n_atoms"] for t in trials]
    return {
        "trials": n,
        "acceptance": sum(t["accepted"] for t in trials) / n if n else None,
        "acceptance_last_half": sum(t["accepted"] for t in half) / len(half) if half else None,
        "mean_e_chain_eV_per_atom": sum(e_chain) / n if n else None,
        "models": models,
        "wall_seconds": trials[-1].get("wall_seconds") if trials else None,
    }


def analyze(run_dir: str | Path) -> int:
    trials = read_trials(run_dir)
    if not trials:
        print(f"no finished trials in {run_dir}")
        return 1
    summary = summarize(trials)
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{summary['trials']} trials, acceptance {summary['acceptance']:.3f} "
          f"(last half {summary['acceptance_last_half']:.3f}), wall {summary['wall_seconds']} s")
    print(f"{'model':>5} {'trials':>6} {'accept':>7} {'|E_ref-E_ML| rms (meV/atom)':>28}")
    for v, m in summary["models"].items():
        print(f"{v:>5} {m['trials']:>6} {m['acceptance']:>7.3f} {m['ml_error_rms_mev_per_atom']:>28.3f}")
    return 0
