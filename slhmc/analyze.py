"""``slhmc analyze DIR``: what a run sampled and how efficiently, from its outputs (also while it runs).

Reads ``trials.jsonl`` (a half-written last line is ignored), ``chain.extxyz`` and
``dataset.extxyz``; writes ``summary.json`` and PNG plots into DIR and prints a short table:

- acceptance overall, per model version and over a sliding window;
- ⟨E_pot⟩ per atom with its error bar and the integrated autocorrelation time (slhmc.statistics);
- effective samples per reference (DFT) call;
- ML-vs-reference energy error of the proposals per model version (meV/atom);
- per model version, the error of the trajectory's energy change, ΔE_ML − ΔE_ref between its
  start and end point (meV/atom and kT for the whole cell: this, not the error of E itself, is
  what the Metropolis test sees), and the acceptance it predicts, beside the observed one;
- radial distribution function per element pair and mean square displacement of the chain.
"""

from __future__ import annotations

import json
import logging
import math
from itertools import combinations_with_replacement
from pathlib import Path

import numpy as np
from ase import units
from ase.data import chemical_symbols
from ase.io import iread

from slhmc.potential.neighbors import neighbor_pairs
from slhmc.statistics import estimate

log = logging.getLogger(__name__)

WINDOW = 50  # trials in the sliding acceptance window


def read_trials(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "trials.jsonl"
    trials = []
    if not path.exists():
        return trials
    for line in path.read_text().splitlines():
        try:
            trials.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written right now
            break
    return trials


def read_frames(path: Path, limit: int | None = None) -> list:
    """Complete frames of an extxyz file that may be being appended to."""
    frames = []
    if not path.exists():
        return frames
    try:
        for atoms in iread(path, index=":"):
            frames.append(atoms)
            if limit is not None and len(frames) >= limit:
                break
    except Exception:  # a frame cut short by a running writer: keep what came before
        pass
    return frames


def sliding_acceptance(accepted: np.ndarray, window: int = WINDOW) -> np.ndarray:
    if len(accepted) < window:
        return np.cumsum(accepted) / np.arange(1, len(accepted) + 1)
    return np.convolve(accepted, np.ones(window) / window, mode="valid")


def run_temperature(run_dir: str | Path, trials: list[dict]) -> tuple[float | None, str]:
    """The run's temperature (K) and where it came from: the config the run was started with
    (config.json); for a run without one, equipartition of the drawn momenta, ⟨K_old⟩ = 3N/2 kT
    (every atom and component is drawn, so this is exact in expectation)."""
    from slhmc.server.outputs import read_config_record

    record = read_config_record(run_dir)
    if record is not None:
        return float(record["config"]["system"]["temperature"]), "config.json"
    k_old = [t["k_old"] / t["n_atoms"] for t in trials if "k_old" in t]
    if not k_old:
        return None, "unknown (no config.json, no k_old)"
    temperature = 2.0 * float(np.mean(k_old)) / (3.0 * units.kB)
    return temperature, f"estimated from k_old of {len(k_old)} trials (no config.json)"


DELTA_E_FIELDS = ("e_ref", "e_ref_old", "e_ml", "e_ml_start", "n_atoms")


def delta_e_statistics(trials: list[dict], temperature_K: float | None) -> dict:
    """Error of the trajectories' energy change and the acceptance it predicts.

    Per trial, err = ΔE_ML − ΔE_ref = (e_ml − e_ml_start) − (e_ref − e_ref_old) (eV, whole cell).
    The test sees ΔH_ref = ΔH_ML − err, where ΔH_ML (h_ml_drift) is the integrator's drift of
    H_ML; with an integrator that conserved H_ML exactly, a trial would be accepted with
    probability min(1, exp(err/kT)). ``acceptance_predicted`` is its mean: the acceptance the
    network's ΔE error alone allows. ``acceptance_expected`` is the mean of min(1, exp(−ΔH/kT))
    over the recorded ΔH (drift included): the observed acceptance without the coin-flip noise.
    """
    if not trials or any(k not in t for t in trials for k in DELTA_E_FIELDS):
        return {}
    err = np.array([(t["e_ml"] - t["e_ml_start"]) - (t["e_ref"] - t["e_ref_old"]) for t in trials])  # eV
    n_atoms = np.array([t["n_atoms"] for t in trials], dtype=float)
    out: dict = {"delta_e_error_rms_mev_per_atom": 1e3 * float(np.sqrt(np.mean((err / n_atoms) ** 2))),
                 "delta_e_error_mean_mev_per_atom": 1e3 * float(np.mean(err / n_atoms)),
                 "delta_e_error_rms_kT": None, "delta_e_error_mean_kT": None,
                 "acceptance_predicted": None, "acceptance_expected": None}
    if temperature_K:
        kT = units.kB * temperature_K  # eV
        delta_h = np.array([t["delta_h"] for t in trials]) if all("delta_h" in t for t in trials) else None
        out.update({
            "delta_e_error_rms_kT": float(np.sqrt(np.mean(err**2)) / kT),
            "delta_e_error_mean_kT": float(np.mean(err) / kT),
            "acceptance_predicted": float(np.mean(np.exp(np.minimum(err / kT, 0.0)))),
            "acceptance_expected": None if delta_h is None else float(np.mean(np.exp(np.minimum(-delta_h / kT, 0.0)))),
        })
    return out


def per_model(trials: list[dict], temperature_K: float | None = None) -> dict[str, dict]:
    groups: dict[int, list[dict]] = {}
    for t in trials:
        groups.setdefault(t["model"], []).append(t)
    out = {}
    for version, ts in sorted(groups.items()):
        err = np.array([(t["e_ref"] - t["e_ml"]) / t["n_atoms"] for t in ts])
        out[str(version)] = {
            "trials": len(ts),
            "acceptance": float(np.mean([t["accepted"] for t in ts])),
            "ml_error_rms_mev_per_atom": 1e3 * float(np.sqrt(np.mean(err**2))),
            # the offset of E_ML cancels in the dynamics; the spread is what drives acceptance
            "ml_error_std_mev_per_atom": 1e3 * float(np.std(err)),
            **delta_e_statistics(ts, temperature_K),
        }
    return out


def rdf(frames: list, r_max: float = 6.0, bins: int = 120) -> dict[str, dict]:
    """g(r) per element pair, averaged over frames; images counted for any cell (vesin pairs).

    Non-periodic structures have no volume to normalise by: there the pair-distance histogram
    is returned normalised to unit area instead (``kind`` says which).
    """
    if not frames:
        return {}
    edges = np.linspace(0.0, r_max, bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    shell = 4.0 / 3.0 * math.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    elements = sorted(set(frames[0].numbers))
    periodic = bool(frames[0].pbc.all())
    counts = {pair: np.zeros(bins) for pair in combinations_with_replacement(elements, 2)}
    norm = dict.fromkeys(counts, 0.0)
    for atoms in frames:
        i, j, S = neighbor_pairs(atoms.positions, atoms.cell.array, atoms.pbc, r_max)
        d = np.linalg.norm(atoms.positions[j] - atoms.positions[i] + S @ atoms.cell.array, axis=1)
        zi, zj = atoms.numbers[i], atoms.numbers[j]
        volume = atoms.get_volume() if periodic else 1.0
        for a, b in counts:
            sel = (zi == a) & (zj == b)
            counts[(a, b)] += np.histogram(d[sel], edges)[0]
            n_a, n_b = np.sum(atoms.numbers == a), np.sum(atoms.numbers == b)
            norm[(a, b)] += n_a * n_b / volume if periodic else 1.0
    out = {}
    for (a, b), c in counts.items():
        if periodic:
            g = c / (norm[(a, b)] * shell)
        else:
            g = c / max(c.sum() * (edges[1] - edges[0]), 1e-300)
        out[f"{chemical_symbols[a]}-{chemical_symbols[b]}"] = {"r": centres.tolist(), "g": g.tolist()}
    return {"kind": "g(r)" if periodic else "pair-distance density (1/Å)", "pairs": out}


def msd(frames: list) -> np.ndarray:
    """Mean square displacement (Å²) of the chain states from the first one, centre-of-mass drift
    removed (HMC momenta move the centre of mass too, which says nothing about the structure)."""
    if not frames:
        return np.zeros(0)
    masses = frames[0].get_masses()
    r0 = frames[0].positions
    out = []
    for atoms in frames:
        d = atoms.positions - r0
        d -= (masses[:, None] * d).sum(0) / masses.sum()
        out.append(float(np.mean(np.sum(d * d, axis=1))))
    return np.array(out)


def summarize(trials: list[dict], n_reference_calls: int | None = None, temperature_K: float | None = None) -> dict:
    """``temperature_K``: the run's, for the ΔE error in kT and the predicted acceptance."""
    n = len(trials)
    accepted = np.array([bool(t["accepted"]) for t in trials], dtype=float)
    e_chain = np.array([t["e_chain"] / t["n_atoms"] for t in trials])
    burn = n // 10  # the first tenth is discarded as equilibration
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


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_rdf(rdf_data: dict, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for pair, d in rdf_data["pairs"].items():
        ax.plot(d["r"], d["g"], label=pair)
    ax.set(xlabel="r (Å)", ylabel=rdf_data["kind"], title=title)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot(run_dir: Path, trials: list[dict], summary: dict, rdf_data: dict, msd_data: np.ndarray) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    idx = np.array([t["trial"] for t in trials])
    accepted = np.array([bool(t["accepted"]) for t in trials], dtype=float)
    models = np.array([t["model"] for t in trials])
    changes = idx[1:][np.diff(models) != 0]

    def finish(fig, name: str) -> None:
        _save(fig, run_dir / name)
        written.append(name)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    window = sliding_acceptance(accepted)
    ax.plot(idx[len(idx) - len(window):], window, label=f"sliding window of {WINDOW} trials")
    ax.axhline(accepted.mean(), color="gray", ls="--", label=f"overall {accepted.mean():.3f}")
    for k, c in enumerate(changes):
        ax.axvline(c, color="C3", lw=0.6, alpha=0.6, label="new model version" if k == 0 else None)
    ax.set(xlabel="trial", ylabel="acceptance", ylim=(-0.02, 1.02), title="Acceptance")
    ax.legend(loc="lower right", fontsize=8)
    finish(fig, "acceptance.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    per_atom = np.array([t["n_atoms"] for t in trials])
    ax.plot(idx, np.array([t["e_ref"] for t in trials]) / per_atom, ".", ms=2, alpha=0.4, label="proposals (reference)")
    ax.plot(idx, np.array([t["e_chain"] for t in trials]) / per_atom, lw=1, label="chain state")
    e = summary["e_pot_eV_per_atom"]
    if e:
        ax.axhline(e["mean"], color="k", ls="--", lw=0.8, label=f"⟨E⟩ = {e['mean']:.5f} ± {e['error']:.5f}")
    ax.set(xlabel="trial", ylabel="reference energy (eV/atom)", title="Potential energy")
    ax.legend(fontsize=8)
    finish(fig, "energy.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    versions = [int(v) for v in summary["models"]]
    ax.plot(versions, [m["ml_error_rms_mev_per_atom"] for m in summary["models"].values()], "o-", label="rms")
    ax.plot(versions, [m["ml_error_std_mev_per_atom"] for m in summary["models"].values()], "s--",
            label="std (offset removed)")
    ax.set_yscale("log")
    ax.set(xlabel="model version", ylabel="|E_ref − E_ML| (meV/atom)", title="ML error of the proposals")
    ax.set_xticks(versions)
    ax.legend(fontsize=8)
    finish(fig, "ml_error.png")

    models = summary["models"]
    if summary.get("delta_e"):
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        left.plot(versions, [m["delta_e_error_rms_mev_per_atom"] for m in models.values()], "o-", color="C0")
        left.set(xlabel="model version", ylabel="rms (ΔE_ML − ΔE_ref) (meV/atom)",
                 title="Error of the trajectories' ΔE")
        left.set_xticks(versions)
        sizes = {t["n_atoms"] for t in trials}
        if summary["temperature_K"] and len(sizes) == 1:
            scale = 1e3 * units.kB * summary["temperature_K"] / sizes.pop()  # meV/atom per kT of the cell
            top = left.secondary_yaxis("right", functions=(lambda y: y / scale, lambda x: x * scale))
            top.set_ylabel("rms (ΔE_ML − ΔE_ref) (kT, whole cell)")
        right.plot(versions, [m["acceptance"] for m in models.values()], "o-", label="observed")
        if summary["temperature_K"]:
            right.plot(versions, [m["acceptance_predicted"] for m in models.values()], "s--",
                       label="predicted from the ΔE error")
            right.plot(versions, [m["acceptance_expected"] for m in models.values()], "^:",
                       label="mean min(1, exp(−ΔH/kT))")
        right.set(xlabel="model version", ylabel="acceptance", ylim=(-0.02, 1.02), title="Acceptance per model")
        right.set_xticks(versions)
        right.legend(fontsize=8, loc="lower right")
        finish(fig, "delta_e_error.png")

    if rdf_data:
        _plot_rdf(rdf_data, "Radial distribution of the chain", run_dir / "rdf.png")
        written.append("rdf.png")

    if len(msd_data):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        stride = max(1, len(trials) // max(len(msd_data), 1))
        ax.plot(np.arange(len(msd_data)) * stride, msd_data)
        ax.set(xlabel="trial", ylabel="MSD (Å²)", title="Mean square displacement of the chain")
        finish(fig, "msd.png")
    return written


def md_spectra(md_dir: Path) -> tuple[dict, dict, list]:
    """Metadata, repeat-averaged VACF DOS, and all frames of an `slhmc md` directory."""
    from slhmc.spectra import vacf_dos

    meta = json.loads((md_dir / "md.json").read_text())
    dt_fs = meta["stride"] * meta["timestep_fs"]
    curves, frames_all = [], []
    for rep in sorted(md_dir.glob("repeat_*")):
        frames = read_frames(rep / "trajectory.extxyz")
        if len(frames) < 16:
            continue
        velocities = np.array([a.get_velocities() for a in frames])
        curves.append(vacf_dos(velocities, frames[0].get_masses(), frames[0].numbers, dt_fs))
        frames_all.extend(frames)
    if not curves:
        return meta, {}, frames_all
    n = min(len(c["nu_THz"]) for c in curves)  # repeats of different length: common grid prefix
    dos = {k: np.mean([c[k][:n] for c in curves], axis=0) for k in curves[0] if k != "nu_THz"}
    dos["nu_THz"] = curves[0]["nu_THz"][:n]
    return meta, dos, frames_all


def analyze_md(md_dir: Path, plots: bool = True) -> int:
    import csv

    from slhmc.spectra import EV_PER_THZ, peak_THz, smooth

    meta, dos, frames = md_spectra(md_dir)
    for rec in meta.get("extrapolation", {}).get("repeats", []):
        if rec.get("first_step") is not None:
            print(f"{md_dir}: repeat {rec['repeat']}: the network extrapolated first at step {rec['first_step']} "
                  f"({rec['flagged_steps']} of {rec['checked_steps']} steps flagged"
                  f"{', repeat stopped there' if rec.get('stopped') else ''})")
    if not dos:
        print(f"{md_dir}: no repeat with enough frames yet")
        return 1
    nu = dos["nu_THz"]
    smoothed = {k: smooth(v, nu, 0.1) for k, v in dos.items() if k != "nu_THz"}
    keys = list(smoothed)
    with open(md_dir / "dos.txt", "w") as f:
        f.write("# VACF phonon DOS, normalised to unit area (1/THz), Gaussian-smoothed 0.1 THz\n")
        f.write("# nu_THz  energy_meV  " + "  ".join(keys) + "\n")
        for i in range(len(nu)):
            values = " ".join(f"{smoothed[k][i]:.6e}" for k in keys)
            f.write(f"{nu[i]:.5f} {1e3 * nu[i] * EV_PER_THZ:.5f} {values}\n")
    energies = []
    for rep in sorted(md_dir.glob("repeat_*")):
        with open(rep / "energies.csv") as f:
            energies += [row for row in csv.DictReader(f)]
    e_pot = np.array([float(r["e_pot_eV"]) for r in energies]) / len(frames[0])
    temps = np.array([float(r["temperature_K"]) for r in energies])
    rdf_data = rdf(frames[:: max(1, len(frames) // 200)])
    msd_data = msd([a for a in frames[: len(frames) // max(1, len(list(md_dir.glob("repeat_*"))))]])
    summary = {"kind": "md", **meta, "frames": len(frames), "e_pot_eV_per_atom": float(e_pot.mean()),
               "temperature_mean_K": float(temps.mean()), "dos_peak_THz": peak_THz(nu, smoothed["total"]),
               "msd_final_A2": float(msd_data[-1]) if len(msd_data) else None}
    (md_dir / "rdf.json").write_text(json.dumps(rdf_data))
    written = []
    if plots:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.8))
        for k in keys:
            ax.plot(nu, smoothed[k], label="total" if k == "total" else k, lw=1.6 if k == "total" else 1.0)
        ax.set(xlim=(0, min(nu[-1], 2.0 * summary["dos_peak_THz"] + 2)), xlabel="frequency (THz)",
               ylabel="DOS (1/THz)", title=f"VACF phonon DOS, {meta['temperature_K']:.0f} K")
        top = ax.secondary_xaxis("top", functions=(lambda x: 1e3 * x * EV_PER_THZ, lambda e: e / (1e3 * EV_PER_THZ)))
        top.set_xlabel("energy (meV)")
        ax.legend(fontsize=8)
        _save(fig, md_dir / "dos.png")
        written.append("dos.png")
        if rdf_data:
            _plot_rdf(rdf_data, f"Radial distribution, {meta['temperature_K']:.0f} K", md_dir / "rdf.png")
            written.append("rdf.png")
    summary["plots"] = written
    (md_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{md_dir}: {meta['repeats']} repeat(s), {len(frames)} frames, <T> = {summary['temperature_mean_K']:.1f} K, "
          f"<E_pot> = {summary['e_pot_eV_per_atom']:.5f} eV/atom, DOS peak {summary['dos_peak_THz']:.2f} THz")
    print(f"data: {md_dir / 'dos.txt'}; plots: {', '.join(written)}")
    return 0


def _cell(value: float | None, width: int, digits: int = 3) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def print_model_table(summary: dict) -> None:
    """Per model version: acceptance observed and predicted, E error, ΔE error (units in headers)."""
    columns = [("model", 5), ("trials", 6), ("accept", 6), ("predicted", 9), ("rms|E_ref-E_ML| (meV/atom)", 26),
               ("std (meV/atom)", 14), ("rms ΔE err (meV/atom)", 21), ("rms ΔE err (kT)", 15)]
    print(" ".join(f"{name:>{width}}" for name, width in columns))
    for v, m in summary["models"].items():
        cells = [f"{v:>5}", f"{m['trials']:>6}", _cell(m["acceptance"], 6), _cell(m.get("acceptance_predicted"), 9),
                 _cell(m["ml_error_rms_mev_per_atom"], 26), _cell(m["ml_error_std_mev_per_atom"], 14),
                 _cell(m.get("delta_e_error_rms_mev_per_atom"), 21), _cell(m.get("delta_e_error_rms_kT"), 15)]
        print(" ".join(cells))
    d = summary.get("delta_e") or {}
    if d.get("acceptance_predicted") is not None:
        print(f"all trials: acceptance observed {summary['acceptance']:.3f}, predicted from the ΔE error "
              f"{d['acceptance_predicted']:.3f}, mean min(1, exp(-ΔH/kT)) {d['acceptance_expected']:.3f}; "
              f"rms ΔE err {d['delta_e_error_rms_mev_per_atom']:.3f} meV/atom = {d['delta_e_error_rms_kT']:.3f} kT "
              f"at {summary['temperature_K']:.1f} K ({summary.get('temperature_source', 'given')})")
    print("ΔE err = (E_ML(end) - E_ML(start)) - (E_ref(end) - E_ref(start)) of a trajectory; predicted = mean "
          "min(1, exp(ΔE err/kT)), the acceptance if the integrator conserved H_ML exactly")


def analyze(run_dir: str | Path, plots: bool = True) -> int:
    run_dir = Path(run_dir)
    if (run_dir / "md.json").exists():
        return analyze_md(run_dir, plots)
    trials = read_trials(run_dir)
    if not trials:
        print(f"no finished trials in {run_dir} yet")
        return 1
    dataset = read_frames(run_dir / "dataset.extxyz")
    chain = read_frames(run_dir / "chain.extxyz")
    temperature, temperature_source = run_temperature(run_dir, trials)
    summary = summarize(trials, len(dataset) or None, temperature)
    summary["temperature_source"] = temperature_source
    equilibrated = chain[len(chain) // 10 :]
    step = max(1, len(equilibrated) // 200)  # ~200 frames are plenty for g(r)
    rdf_data = rdf(equilibrated[::step])
    msd_data = msd(chain)
    summary["msd_final_A2"] = float(msd_data[-1]) if len(msd_data) else None
    summary["plots"] = plot(run_dir, trials, summary, rdf_data, msd_data) if plots else []
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "rdf.json").write_text(json.dumps(rdf_data))

    e = summary["e_pot_eV_per_atom"]
    print(f"{run_dir}: {summary['trials']} trials, acceptance {summary['acceptance']:.3f} "
          f"(last half {summary['acceptance_last_half']:.3f}), {summary['reference_calls']} reference calls, "
          f"wall {summary['wall_seconds']} s")
    if e:
        per_call = summary["effective_samples_per_reference_call"]
        print(f"<E_pot> = {e['mean']:.6f} ± {e['error']:.6f} eV/atom, tau {e['tau_trials']:.1f} trials, "
              f"{e['n_effective']:.0f} effective samples"
              + ("" if per_call is None else f", {per_call:.3f} per reference call"))
    print_model_table(summary)
    if summary["plots"]:
        print("plots: " + ", ".join(str(run_dir / p) for p in summary["plots"]))
    return 0
