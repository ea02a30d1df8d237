"""The volume side of an NPT run (``[system] pressure`` set): what ``slhmc analyze`` adds as the
``npt`` block of summary.json.

Every trial record of an NPT run carries ``kind`` ("position": an HMC trajectory at fixed cell;
"cell": an ML inner chain of Metropolis cell steps, corrected by the reference energy of its end
point) and ``volume``, the chain's volume after the trial (Å³); anisotropic runs also ``cell``,
the chain's cell after the trial (rows = lattice vectors, Å). A cell trial also records
``volume_proposed``, ``cell_steps``, ``cell_steps_accepted``, ``volume_step`` and
``log_acceptance``; its ``e_ref`` is null when the inner chain did not move (nothing labelled,
not accepted).

Averages are over the equilibrated trials only: the trials before ``[hmc] volume_adapt_until``
(the volume step was still being adapted) or the first 1/10 of the run, whichever is more
(:func:`slhmc.analysis.chain.discarded_trials`). Error bars are standard errors with the
integrated autocorrelation time of each series (:func:`slhmc.statistics.estimate`).

- ⟨V⟩ (Å³, and Å³/atom), ⟨ρ⟩ (g/cm³, from the masses of the structure), ⟨H⟩ = ⟨E + PV⟩ (eV/atom);
- var(V) (Å⁶): the mean of (V − V̄)², its error from that series' own τ; and from it the
  isothermal bulk modulus B = kT⟨V⟩/var(V) (GPa), the NPT fluctuation formula;
- the mean lattice lengths a, b, c (Å) and angles α, β, γ (degrees): of the records' ``cell``
  (anisotropic runs), else of the chain frames (every ``[output] stride``-th chain state);
- acceptance of position and cell trials separately, the inner-step acceptance of the cell
  trials, and the ΔE error of the cell trials that were labelled: a cell trial is accepted with
  probability exactly min(1, exp(ΔE err/kT)), ΔE err = (E_ML(end) − E_ML(start)) − (E_ref(end) −
  E_ref(start)), since its inner chain samples the ML ensemble exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.geometry import cell_to_cellpar

from slhmc.rundir import read_run_config
from slhmc.statistics import estimate

KINDS = ("position", "cell")
LATTICE = ("a_A", "b_A", "c_A", "alpha_deg", "beta_deg", "gamma_deg")
G_PER_CM3 = units._amu * 1e3 / 1e-24  # (g/cm³) per (amu/Å³)


@dataclass(frozen=True)
class NptSettings:
    """What the analysis needs from the config of an NPT run."""

    pressure_GPa: float | None  # None: not recorded (no config in the run directory)
    cell: str  # "isotropic" or "anisotropic"
    volume_adapt_until: int  # trials before this one are equilibration
    source: str  # where the settings came from, for the printout


def _hmc_default(key: str):
    from slhmc.config import HMCConfig

    return HMCConfig.model_fields[key].default


def npt_settings(run_dir: str | Path, trials: list[dict]) -> NptSettings | None:
    """The NPT settings of a run, or None for an NVT run (no ``[system] pressure``).

    From config.json (or the run directory's config.toml, where absent keys take the config's
    defaults); a run without either is NPT when its trials record ``volume``."""
    config = read_run_config(run_dir)
    if config is not None:
        pressure = config.get("system", {}).get("pressure")
        if pressure is None:
            return None
        hmc = config.get("hmc", {})
        return NptSettings(float(pressure), hmc.get("cell") or _hmc_default("cell"),
                           int(hmc.get("volume_adapt_until", _hmc_default("volume_adapt_until"))), "config")
    if trials and "volume" in trials[0]:
        return NptSettings(None, "anisotropic" if "cell" in trials[0] else "isotropic", 0,
                           "trials (no config in the run directory: pressure unknown, no adaptation cut)")
    return None


def adaptation_cut(trials: list[dict], settings: NptSettings) -> int:
    """How many of ``trials`` (in order) come before ``volume_adapt_until``."""
    return sum(1 for t in trials if t["trial"] < settings.volume_adapt_until)


def estimate_dict(x: np.ndarray) -> dict | None:
    """Mean, τ-corrected standard error, τ (trials) and effective samples of a series; None under 2 samples."""
    if len(x) < 2:
        return None
    e = estimate(x)
    return {"mean": e.mean, "error": e.error, "tau_trials": e.tau, "n_effective": e.n_effective}


def frame_trials(frames: list[Atoms], trials: list[dict]) -> np.ndarray:
    """The trial after which each chain frame was written: its ``trial`` info, else (frames written
    before the info existed) frames spread evenly over the trials, the last after the last trial
    (chain.extxyz holds every ``[output] stride``-th chain state)."""
    if all("trial" in a.info for a in frames):
        return np.array([int(a.info["trial"]) for a in frames], dtype=int)
    first, n = (trials[0]["trial"], len(trials)) if trials else (0, 0)
    return np.array([first + (k + 1) * n // len(frames) - 1 for k in range(len(frames))], dtype=int)


def lattice_series(trials: list[dict], frames: list[Atoms]) -> tuple[np.ndarray, np.ndarray] | None:
    """(trial numbers, the chain's cells after them (n, 3, 3) in Å): the records' ``cell``
    (anisotropic runs), else the chain frames' cells; None when neither is there."""
    if trials and all(t.get("cell") is not None for t in trials):
        return np.array([t["trial"] for t in trials]), np.array([t["cell"] for t in trials], dtype=float)
    if frames:
        return frame_trials(frames, trials), np.array([a.cell.array for a in frames])
    return None


def first_kept_trial(trials: list[dict], discard: int) -> int:
    """The trial number of the first trial after the equilibration cut (one past the last if none)."""
    return trials[discard]["trial"] if discard < len(trials) else trials[-1]["trial"] + 1


def equilibrated_frames(frames: list[Atoms], trials: list[dict], discard: int) -> list[Atoms]:
    """The chain frames written after the first ``discard`` trials."""
    first = first_kept_trial(trials, discard)
    return [a for a, t in zip(frames, frame_trials(frames, trials), strict=True) if t >= first]


def lattice_statistics(cells: np.ndarray) -> dict:
    """Mean lattice lengths (Å) and angles (degrees) of a series of cells, each with its error bar."""
    parameters = np.array([cell_to_cellpar(c) for c in cells])
    return {name: estimate_dict(parameters[:, k]) for k, name in enumerate(LATTICE)}


def kind_statistics(trials: list[dict], settings: NptSettings, cell_delta_e: dict) -> dict:
    """Acceptance of position and cell trials separately (over all trials), and what the cell
    trials did: how many moved the cell at all (were labelled), their inner-step acceptance
    (overall and after the adaptation) and, from ``cell_delta_e`` (the cell trials'
    :func:`slhmc.analysis.chain.delta_e_statistics`), their ΔE error (meV/atom, kT of the cell)
    and the acceptance it predicts, mean min(1, exp(ΔE err/kT)), which is exact for cell trials."""
    out: dict = {}
    for kind in KINDS:
        ts = [t for t in trials if t.get("kind") == kind]
        accepted = sum(bool(t["accepted"]) for t in ts)
        out[kind] = {"trials": len(ts), "accepted": accepted, "acceptance": accepted / len(ts) if ts else None}
    cell = [t for t in trials if t.get("kind") == "cell"]
    moved = [t for t in cell if t.get("e_ref") is not None]
    steps = sum(t.get("cell_steps") or 0 for t in cell)
    steps_accepted = sum(t.get("cell_steps_accepted") or 0 for t in cell)
    frozen = [t for t in cell if t["trial"] >= settings.volume_adapt_until]
    frozen_steps = sum(t.get("cell_steps") or 0 for t in frozen)
    step_sizes = [t["volume_step"] for t in cell if t.get("volume_step") is not None]
    out["cell"].update({
        "moved": len(moved),  # the inner chain moved: the end point was labelled
        "acceptance_of_moved": sum(bool(t["accepted"]) for t in moved) / len(moved) if moved else None,
        "inner_steps": steps,
        "inner_steps_accepted": steps_accepted,
        "inner_acceptance": steps_accepted / steps if steps else None,
        "inner_acceptance_after_adaptation": (sum(t.get("cell_steps_accepted") or 0 for t in frozen) / frozen_steps
                                              if frozen_steps else None),
        "volume_step_first": step_sizes[0] if step_sizes else None,
        "volume_step_last": step_sizes[-1] if step_sizes else None,
        "delta_e_error_rms_mev_per_atom": cell_delta_e.get("delta_e_error_rms_mev_per_atom"),
        "delta_e_error_rms_kT": cell_delta_e.get("delta_e_error_rms_kT"),
        "acceptance_predicted": cell_delta_e.get("acceptance_predicted"),
    })
    return out


def npt_statistics(trials: list[dict], settings: NptSettings, discard: int, temperature_K: float | None,
                   frames: list[Atoms], cell_delta_e: dict) -> dict:
    """The ``npt`` block of summary.json. ``discard``: equilibration trials left out of the averages;
    ``frames``: the chain frames (the masses for ρ come from the first; the cells, those after the
    cut, where the records have none). Every average is {"mean", "error", "tau_trials", "n_effective"} or None (under
    2 equilibrated trials)."""
    kept = trials[discard:]
    n_atoms = trials[0]["n_atoms"]
    volume = np.array([t["volume"] for t in kept], dtype=float)  # Å³
    mass_amu = float(frames[0].get_masses().sum()) if frames else None
    v = estimate_dict(volume)
    variance = estimate_dict((volume - volume.mean()) ** 2) if len(volume) > 1 else None
    if variance is not None:
        variance["mean"] = float(np.var(volume, ddof=1))  # the unbiased value; the error from the squared deviations
    bulk = None
    if v is not None and variance is not None and variance["mean"] > 0 and temperature_K:
        b = units.kB * temperature_K * v["mean"] / variance["mean"] / units.GPa
        relative = np.hypot(v["error"] / v["mean"], variance["error"] / variance["mean"])
        bulk = {"value": float(b), "error": float(b * relative)}
    enthalpy = None
    if settings.pressure_GPa is not None:
        pv = settings.pressure_GPa * units.GPa * volume  # eV
        enthalpy = estimate_dict((np.array([t["e_chain"] for t in kept]) + pv) / n_atoms)
    series = lattice_series(trials, frames)
    cells = None if series is None else series[1][series[0] >= first_kept_trial(trials, discard)]
    return {
        "pressure_GPa": settings.pressure_GPa,
        "cell": settings.cell,
        "volume_adapt_until": settings.volume_adapt_until,
        "settings_source": settings.source,
        "discarded_trials": discard,
        "samples": len(kept),
        "n_atoms": n_atoms,
        "mass_amu": mass_amu,
        "volume_A3": v,
        "volume_A3_per_atom": estimate_dict(volume / n_atoms),
        "density_g_cm3": estimate_dict(G_PER_CM3 * mass_amu / volume) if mass_amu else None,
        "volume_variance_A6": variance,
        "bulk_modulus_GPa": bulk,
        "enthalpy_eV_per_atom": enthalpy,
        "lattice": lattice_statistics(cells) if cells is not None and len(cells) > 1 else None,
        "acceptance_by_kind": kind_statistics(trials, settings, cell_delta_e),
    }


def _pm(e: dict | None, digits: int, unit: str) -> str:
    if e is None:
        return "n/a"
    return f"{e['mean']:.{digits}f} ± {e['error']:.{digits}f} {unit}"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def report_lines(npt: dict) -> list[str]:
    """The NPT lines of ``slhmc analyze``'s printout."""
    pressure = "unknown" if npt["pressure_GPa"] is None else f"{npt['pressure_GPa']:g} GPa"
    lines = [f"NPT ({npt['cell']} cell, P = {pressure}), averages over the {npt['samples']} trials after the first "
             f"{npt['discarded_trials']}:"]
    v = npt["volume_A3"]
    if v is not None:
        lines.append(f"  <V> = {_pm(v, 3, 'Å³')} = {_pm(npt['volume_A3_per_atom'], 4, 'Å³/atom')}, "
                     f"tau {v['tau_trials']:.1f} trials, {v['n_effective']:.0f} effective samples")
        lines.append(f"  <rho> = {_pm(npt['density_g_cm3'], 4, 'g/cm³')}; "
                     f"var(V) = {_pm(npt['volume_variance_A6'], 3, 'Å⁶')}"
                     + ("" if npt["bulk_modulus_GPa"] is None else
                        f"; bulk modulus kT<V>/var(V) = {npt['bulk_modulus_GPa']['value']:.1f} ± "
                        f"{npt['bulk_modulus_GPa']['error']:.1f} GPa"))
        if npt["enthalpy_eV_per_atom"] is not None:
            lines.append(f"  <H> = <E + PV> = {_pm(npt['enthalpy_eV_per_atom'], 6, 'eV/atom')}")
    else:
        lines.append("  no averages yet: every trial so far is equilibration")
    lattice = npt["lattice"]
    if lattice is not None and lattice["a_A"] is not None:
        lines.append("  <a>, <b>, <c> = " + ", ".join(_pm(lattice[k], 4, "Å") for k in LATTICE[:3])
                     + "; <alpha>, <beta>, <gamma> = " + ", ".join(_pm(lattice[k], 3, "°") for k in LATTICE[3:]))
    kinds = npt["acceptance_by_kind"]
    pos, cell = kinds["position"], kinds["cell"]
    lines.append(f"  acceptance: position trials {_ratio(pos['acceptance'])} ({pos['trials']}), cell trials "
                 f"{_ratio(cell['acceptance'])} ({cell['trials']}; {cell['moved']} moved the cell, of those "
                 f"{_ratio(cell['acceptance_of_moved'])} accepted, predicted from their ΔE error "
                 f"{_ratio(cell['acceptance_predicted'])})")
    step = cell["volume_step_last"]
    lines.append(f"  cell trials' inner steps: acceptance {_ratio(cell['inner_acceptance'])} "
                 f"({cell['inner_steps_accepted']}/{cell['inner_steps']}), after the adaptation "
                 f"{_ratio(cell['inner_acceptance_after_adaptation'])}; volume step (ln V) "
                 + ("n/a" if step is None else f"{cell['volume_step_first']:.4g} at first, {step:.4g} last"))
    return lines
