"""Analysis of a run directory: what the chain sampled and how efficiently.

Reads ``trials.jsonl`` (a half-written last line is ignored), ``chain.extxyz`` and
``dataset.extxyz`` (through slhmc.rundir); writes ``summary.json``, ``rdf.json`` and PNG plots
into the run directory and prints a short table:

- acceptance overall, per model version and over a sliding window;
- ⟨E_pot⟩ per atom with its error bar and the integrated autocorrelation time (slhmc.statistics);
- effective samples per reference (DFT) call;
- ML-vs-reference energy error of the proposals per model version (meV/atom);
- per model version, the error of the trajectory's energy change, ΔE_ML − ΔE_ref between its
  start and end point (meV/atom and kT for the whole cell: this, not the error of E itself, is
  what the Metropolis test sees), and the acceptance it predicts, beside the observed one;
- radial distribution function per element pair and mean square displacement of the chain;
- for an NPT run (``[system] pressure`` set), the ``npt`` block of :mod:`slhmc.analysis.npt`:
  ⟨V⟩, ⟨ρ⟩, var(V), lattice parameters, acceptance of position and cell trials, and the volume
  plots. Its averages (and ⟨E_pot⟩ and g(r)) leave out the trials before ``[hmc]
  volume_adapt_until`` or the first 1/10 of the run, whichever is more.

Cell trials of an NPT run whose inner chain did not move have no reference energy (``e_ref``
null): they count in the acceptance, not in the ML errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from ase import units

from slhmc.rundir import CHAIN, DATASET, RDF, SUMMARY, read_config_record, read_frames, read_trials
from slhmc.statistics import estimate

from . import plots as plotting
from .npt import NptSettings, adaptation_cut, equilibrated_frames, npt_settings, npt_statistics, report_lines
from .structure import msd, rdf

WINDOW = 50  # trials in the sliding acceptance window
BURN_IN_DIVISOR = 10  # the first 1/10 of the trials (and of the chain frames) is discarded as equilibration
RDF_FRAMES = 200  # about this many equilibrated chain frames are plenty for g(r)
DELTA_E_FIELDS = ("e_ref", "e_ref_old", "e_ml", "e_ml_start", "n_atoms")


def sliding_acceptance(accepted: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Mean of ``accepted`` (0/1) over ``window`` consecutive trials; the running mean when there
    are fewer trials than that."""
    if len(accepted) < window:
        return np.cumsum(accepted) / np.arange(1, len(accepted) + 1)
    return np.convolve(accepted, np.ones(window) / window, mode="valid")


def run_temperature(run_dir: str | Path, trials: list[dict]) -> tuple[float | None, str]:
    """The run's temperature (K) and where it came from: the config the run was started with
    (config.json); for a run without one, equipartition of the drawn momenta, ⟨K_old⟩ = 3N/2 kT
    (every atom and component is drawn, so this is exact in expectation)."""
    record = read_config_record(run_dir)
    if record is not None:
        return float(record["config"]["system"]["temperature"]), "config.json"
    k_old = [t["k_old"] / t["n_atoms"] for t in trials if t.get("k_old") is not None]  # null for cell trials
    if not k_old:
        return None, "unknown (no config.json, no k_old)"
    temperature = 2.0 * float(np.mean(k_old)) / (3.0 * units.kB)
    return temperature, f"estimated from k_old of {len(k_old)} trials (no config.json)"


def delta_e_statistics(trials: list[dict], temperature_K: float | None) -> dict:
    """Error of the trajectories' energy change and the acceptance it predicts.

    Per trial, err = ΔE_ML − ΔE_ref = (e_ml − e_ml_start) − (e_ref − e_ref_old) (eV, whole cell).
    The test sees ΔH_ref = ΔH_ML − err, where ΔH_ML (h_ml_drift) is the integrator's drift of
    H_ML; with an integrator that conserved H_ML exactly, a trial would be accepted with
    probability min(1, exp(err/kT)). ``acceptance_predicted`` is its mean: the acceptance the
    network's ΔE error alone allows. ``acceptance_expected`` is the mean of min(1, exp(−ΔH/kT))
    over the recorded ΔH (drift included): the observed acceptance without the coin-flip noise.
    Empty for trials recorded without the ΔE fields; the kT entries are None without a temperature.

    NPT cell trials count where they were labelled (``e_ref`` not null); the test of a cell trial
    is exactly min(1, exp(err/kT)) (its inner chain samples the ML ensemble exactly), which is what
    ``acceptance_expected`` takes for them.
    """
    if not trials or any(k not in t for t in trials for k in DELTA_E_FIELDS):
        return {}
    trials = [t for t in trials if t["e_ref"] is not None]  # a cell trial whose inner chain did not move
    if not trials:
        return {}
    err = np.array([(t["e_ml"] - t["e_ml_start"]) - (t["e_ref"] - t["e_ref_old"]) for t in trials])  # eV
    n_atoms = np.array([t["n_atoms"] for t in trials], dtype=float)
    out: dict = {"delta_e_error_rms_mev_per_atom": 1e3 * float(np.sqrt(np.mean((err / n_atoms) ** 2))),
                 "delta_e_error_mean_mev_per_atom": 1e3 * float(np.mean(err / n_atoms)),
                 "delta_e_error_rms_kT": None, "delta_e_error_mean_kT": None,
                 "acceptance_predicted": None, "acceptance_expected": None}
    if temperature_K:
        kT = units.kB * temperature_K  # eV
        cell = np.array([t.get("kind") == "cell" for t in trials])
        delta_h = None
        if all("delta_h" in t for t, c in zip(trials, cell, strict=True) if not c):
            delta_h = np.array([-e if c else t["delta_h"] for t, e, c in zip(trials, err, cell, strict=True)])
        out.update({
            "delta_e_error_rms_kT": float(np.sqrt(np.mean(err**2)) / kT),
            "delta_e_error_mean_kT": float(np.mean(err) / kT),
            "acceptance_predicted": float(np.mean(np.exp(np.minimum(err / kT, 0.0)))),
            "acceptance_expected": None if delta_h is None else float(np.mean(np.exp(np.minimum(-delta_h / kT, 0.0)))),
        })
    return out


def per_model(trials: list[dict], temperature_K: float | None = None) -> dict[str, dict]:
    """Per model version (the key, as a string): trials, acceptance, rms and std of
    E_ref − E_ML of the proposals (meV/atom; None where no proposal of the version was labelled)
    and :func:`delta_e_statistics`."""
    groups: dict[int, list[dict]] = {}
    for t in trials:
        groups.setdefault(t["model"], []).append(t)
    out = {}
    for version, ts in sorted(groups.items()):
        err = np.array([(t["e_ref"] - t["e_ml"]) / t["n_atoms"] for t in ts if t["e_ref"] is not None])
        out[str(version)] = {
            "trials": len(ts),
            "acceptance": float(np.mean([t["accepted"] for t in ts])),
            "ml_error_rms_mev_per_atom": 1e3 * float(np.sqrt(np.mean(err**2))) if len(err) else None,
            # the offset of E_ML cancels in the dynamics; the spread is what drives acceptance
            "ml_error_std_mev_per_atom": 1e3 * float(np.std(err)) if len(err) else None,
            **delta_e_statistics(ts, temperature_K),
        }
    return out


def discarded_trials(trials: list[dict], npt: NptSettings | None = None) -> int:
    """How many of the first trials are equilibration: 1/:data:`BURN_IN_DIVISOR` of the run; for an
    NPT run at least those before ``volume_adapt_until`` (the volume step was being adapted)."""
    burn = len(trials) // BURN_IN_DIVISOR
    return burn if npt is None else max(burn, adaptation_cut(trials, npt))


def summarize(trials: list[dict], n_reference_calls: int | None = None, temperature_K: float | None = None,
              discard: int | None = None) -> dict:
    """What summary.json holds (without ``plots``, ``msd_final_A2``, ``temperature_source``, ``npt``).

    ``temperature_K``: the run's, for the ΔE error in kT and the predicted acceptance;
    ``discard``: the equilibration trials left out of ⟨E_pot⟩ (default: :func:`discarded_trials`).
    """
    n = len(trials)
    accepted = np.array([bool(t["accepted"]) for t in trials], dtype=float)
    e_chain = np.array([t["e_chain"] / t["n_atoms"] for t in trials])
    burn = discarded_trials(trials) if discard is None else discard
    e = estimate(e_chain[burn:]) if n - burn > 1 else None
    half = accepted[n // 2 :]
    summary = {
        "trials": n,
        "acceptance": float(accepted.mean()) if n else None,
        "acceptance_last_half": float(half.mean()) if len(half) else None,
        "acceptance_window": WINDOW,
        "e_pot_eV_per_atom": None if e is None else {
            "mean": e.mean, "error": e.error, "tau_trials": e.tau, "n_effective": e.n_effective,
            "discarded_trials": burn,
        },
        "reference_calls": n_reference_calls,
        "effective_samples_per_reference_call": (
            e.n_effective / n_reference_calls if e is not None and n_reference_calls else None
        ),
        "temperature_K": temperature_K,
        "delta_e": delta_e_statistics(trials, temperature_K),
        "models": per_model(trials, temperature_K),
        "wall_seconds": trials[-1].get("wall_seconds") if trials else None,
        "dft_seconds_mean": float(np.mean([t["dft_seconds"] for t in trials])) if n else None,
        "mlmd_seconds_mean": float(np.mean([t["mlmd_seconds"] for t in trials])) if n else None,
    }
    return summary


def _cell(value: float | None, width: int, digits: int = 3) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def model_table(summary: dict) -> list[str]:
    """Per model version: acceptance observed and predicted, E error, ΔE error (units in headers)."""
    columns = [("model", 5), ("trials", 6), ("accept", 6), ("predicted", 9), ("rms|E_ref-E_ML| (meV/atom)", 26),
               ("std (meV/atom)", 14), ("rms ΔE err (meV/atom)", 21), ("rms ΔE err (kT)", 15)]
    lines = [" ".join(f"{name:>{width}}" for name, width in columns)]
    for v, m in summary["models"].items():
        cells = [f"{v:>5}", f"{m['trials']:>6}", _cell(m["acceptance"], 6), _cell(m.get("acceptance_predicted"), 9),
                 _cell(m["ml_error_rms_mev_per_atom"], 26), _cell(m["ml_error_std_mev_per_atom"], 14),
                 _cell(m.get("delta_e_error_rms_mev_per_atom"), 21), _cell(m.get("delta_e_error_rms_kT"), 15)]
        lines.append(" ".join(cells))
    d = summary.get("delta_e") or {}
    if d.get("acceptance_predicted") is not None:
        lines.append(f"all trials: acceptance observed {summary['acceptance']:.3f}, predicted from the ΔE error "
                     f"{d['acceptance_predicted']:.3f}, mean min(1, exp(-ΔH/kT)) {d['acceptance_expected']:.3f}; "
                     f"rms ΔE err {d['delta_e_error_rms_mev_per_atom']:.3f} meV/atom = "
                     f"{d['delta_e_error_rms_kT']:.3f} kT at {summary['temperature_K']:.1f} K "
                     f"({summary.get('temperature_source', 'given')})")
    lines.append("ΔE err = (E_ML(end) - E_ML(start)) - (E_ref(end) - E_ref(start)) of a trajectory; predicted = mean "
                 "min(1, exp(ΔE err/kT)), the acceptance if the integrator conserved H_ML exactly")
    return lines


def report(run_dir: Path, summary: dict) -> list[str]:
    """The lines ``slhmc analyze`` prints for a run directory."""
    e = summary["e_pot_eV_per_atom"]
    lines = [f"{run_dir}: {summary['trials']} trials, acceptance {summary['acceptance']:.3f} "
             f"(last half {summary['acceptance_last_half']:.3f}), {summary['reference_calls']} reference calls, "
             f"wall {summary['wall_seconds']} s"]
    if e:
        per_call = summary["effective_samples_per_reference_call"]
        lines.append(f"<E_pot> = {e['mean']:.6f} ± {e['error']:.6f} eV/atom, tau {e['tau_trials']:.1f} trials, "
                     f"{e['n_effective']:.0f} effective samples"
                     + ("" if per_call is None else f", {per_call:.3f} per reference call"))
        if "npt" not in summary:
            lines.append(f"burn-in: the first {e['discarded_trials']} of {summary['trials']} trials (1/"
                         f"{BURN_IN_DIVISOR} of the run) are discarded from <E_pot> and g(r), as the chain's "
                         f"equilibration from the start structure")
    if "npt" in summary:
        npt = summary["npt"]
        lines.append(f"burn-in: the first {npt['discarded_trials']} of {summary['trials']} trials (those before "
                     f"volume_adapt_until = {npt['volume_adapt_until']}, while the volume step was adapted, or 1/"
                     f"{BURN_IN_DIVISOR} of the run, whichever is more) are discarded from <E_pot>, <V> and g(r)")
        lines += report_lines(npt)
    lines += model_table(summary)
    if summary["plots"]:
        lines.append("plots: " + ", ".join(str(run_dir / p) for p in summary["plots"]))
    return lines


def analyze_run(run_dir: str | Path, plots: bool = True) -> int:
    """``slhmc analyze`` on a run directory: prints the report, writes summary.json, rdf.json and
    (``plots``) the PNG files. Returns 1 while the run has no finished trial, else 0."""
    run_dir = Path(run_dir)
    trials = read_trials(run_dir)
    if not trials:
        print(f"no finished trials in {run_dir} yet")
        return 1
    dataset = read_frames(run_dir / DATASET)
    chain = read_frames(run_dir / CHAIN)
    temperature, temperature_source = run_temperature(run_dir, trials)
    npt = npt_settings(run_dir, trials)
    discard = discarded_trials(trials, npt)
    summary = summarize(trials, len(dataset) or None, temperature, discard)
    summary["temperature_source"] = temperature_source
    if npt is None:
        equilibrated = chain[len(chain) // BURN_IN_DIVISOR :]
    else:
        cell_delta_e = delta_e_statistics([t for t in trials if t.get("kind") == "cell"], temperature)
        summary["npt"] = npt_statistics(trials, npt, discard, temperature, chain, cell_delta_e)
        equilibrated = equilibrated_frames(chain, trials, discard)
    rdf_data = rdf(equilibrated[:: max(1, len(equilibrated) // RDF_FRAMES)])
    msd_data = msd(chain)
    summary["msd_final_A2"] = float(msd_data[-1]) if len(msd_data) else None
    if plots:
        accepted = np.array([bool(t["accepted"]) for t in trials], dtype=float)
        summary["plots"] = plotting.plot_run(run_dir, trials, summary, sliding_acceptance(accepted), rdf_data, msd_data)
        if npt is not None:
            summary["plots"] += plotting.plot_npt(run_dir, trials, summary["npt"], chain)
    else:
        summary["plots"] = []
    (run_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
    (run_dir / RDF).write_text(json.dumps(rdf_data))
    print("\n".join(report(run_dir, summary)))
    return 0
