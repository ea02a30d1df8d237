"""``slhmc analyze RUN_300K RUN_600K ...``: thermal expansion from NPT runs at several temperatures.

Each run gives ⟨V⟩ per atom at its temperature and pressure, averaged over its equilibrated trials
(the same cut and τ-corrected error bar as its ``npt`` block: :mod:`slhmc.analysis.npt`). The runs
are sorted by pressure, then temperature; between consecutive temperatures at one pressure

    α_V = Δ ln⟨V⟩ / ΔT (1/K),   α = α_V / 3 (linear, 1/K),

at the midpoint temperature, with σ(α_V) = sqrt((σ_V1/V1)² + (σ_V2/V2)²) / ΔT (independent runs).
Where the records hold the cell (anisotropic runs), each axis also gets α_a = Δ ln⟨a⟩ / ΔT. With
three or more temperatures at one pressure, a weighted straight-line fit of ln⟨V⟩ against T gives
one α_V for the whole range.

The length printed beside ⟨V⟩ is a_cub = (⟨V⟩/atom)^(1/3), the edge of a cube holding one atom: its
relative change is the linear expansion of any isotropic solid. A cubic lattice constant is a fixed
multiple of it, a = (n ⟨V⟩/atom)^(1/3) with n atoms in the conventional cell (fcc: n = 4, bcc: 2,
diamond: 8).

The runs must be of one composition (the same reduced formula). Writes expansion.json and
expansion.png (⟨V⟩/atom against T, and α_V between the temperatures) into the output directory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from slhmc.rundir import CHAIN, is_md_dir, read_frames, read_trials

from . import plots as plotting
from .chain import discarded_trials, run_temperature
from .npt import LATTICE, estimate_dict, lattice_series, lattice_statistics, npt_settings

EXPANSION_JSON = "expansion.json"
EXPANSION_PNG = "expansion.png"
AXES = ("a", "b", "c")


class ExpansionError(ValueError):
    """Runs that give no thermal expansion: not NPT runs, no equilibrated trials, mixed compositions."""


def run_point(run_dir: str | Path) -> dict:
    """One run's temperature (K), pressure (GPa), ⟨V⟩ per atom (Å³) and a_cub (Å), each average
    with its error; ``lattice`` (Å, degrees) where the records hold the cell, else None."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExpansionError(f"{run_dir}: no such directory")
    if is_md_dir(run_dir):
        raise ExpansionError(f"{run_dir} is an slhmc md directory, not an NPT run")
    trials = read_trials(run_dir)
    if not trials:
        raise ExpansionError(f"{run_dir}: no finished trials yet")
    settings = npt_settings(run_dir, trials)
    if settings is None:
        raise ExpansionError(f"{run_dir} is an NVT run (no [system] pressure): its volume is fixed")
    temperature, _ = run_temperature(run_dir, trials)
    if temperature is None:
        raise ExpansionError(f"{run_dir}: the run's temperature is unknown")
    discard = discarded_trials(trials, settings)
    kept = trials[discard:]
    if len(kept) < 2:
        raise ExpansionError(f"{run_dir}: all {len(trials)} trials so far are equilibration (the first {discard})")
    n_atoms = trials[0]["n_atoms"]
    v = estimate_dict(np.array([t["volume"] for t in kept], dtype=float) / n_atoms)
    assert v is not None
    length = v["mean"] ** (1.0 / 3.0)
    frames = read_frames(run_dir / CHAIN, limit=1)
    series = lattice_series(kept, [])  # the records' cells (anisotropic runs); not the chain frames
    return {
        "run": str(run_dir),
        "temperature_K": temperature,
        "pressure_GPa": settings.pressure_GPa,
        "formula": str(frames[0].symbols.formula.reduce()[0]) if frames else None,
        "n_atoms": n_atoms,
        "trials": len(trials),
        "discarded_trials": discard,
        "volume_A3_per_atom": v,
        "a_cub_A": {"mean": length, "error": length * v["error"] / (3.0 * v["mean"])},
        "lattice": lattice_statistics(series[1]) if series is not None else None,
    }


def expansion_points(run_dirs: list[str | Path]) -> list[dict]:
    """:func:`run_point` of every run, sorted by pressure, then temperature. ExpansionError (saying
    which run and why) for a run that gives none, or runs of different compositions."""
    if len(run_dirs) < 2:
        raise ExpansionError("thermal expansion needs NPT runs at two or more temperatures")
    points = [run_point(d) for d in run_dirs]
    formulas = {p["formula"] for p in points if p["formula"] is not None}
    if len(formulas) > 1:
        raise ExpansionError("the runs are of different compositions: " + ", ".join(
            f"{p['run']}: {p['formula']}" for p in points))
    return sorted(points, key=lambda p: (p["pressure_GPa"] or 0.0, p["temperature_K"]))


def _coefficient(x1: float, e1: float, x2: float, e2: float, dt: float) -> dict:
    """Δ ln x / ΔT (1/K) with its error, the two means independent."""
    return {"value": (math.log(x2) - math.log(x1)) / dt, "error": math.hypot(e1 / x1, e2 / x2) / abs(dt)}


def _third(c: dict) -> dict:
    return {"value": c["value"] / 3.0, "error": c["error"] / 3.0}


def _same_pressure(p: dict, q: dict) -> bool:
    if p["pressure_GPa"] is None or q["pressure_GPa"] is None:
        return p["pressure_GPa"] is q["pressure_GPa"]
    return math.isclose(p["pressure_GPa"], q["pressure_GPa"], rel_tol=1e-9, abs_tol=1e-9)


def coefficients(points: list[dict]) -> list[dict]:
    """α_V and α = α_V/3 (1/K, with errors) between consecutive temperatures at one pressure
    (``points`` sorted as :func:`expansion_points` returns them); per axis where both runs have
    their lattice lengths."""
    out = []
    for p, q in zip(points, points[1:], strict=False):
        dt = q["temperature_K"] - p["temperature_K"]
        if not _same_pressure(p, q) or dt <= 0:
            continue
        vp, vq = p["volume_A3_per_atom"], q["volume_A3_per_atom"]
        alpha_v = _coefficient(vp["mean"], vp["error"], vq["mean"], vq["error"], dt)
        axes = None
        if p["lattice"] is not None and q["lattice"] is not None:
            axes = {}
            for axis, key in zip(AXES, LATTICE[:3], strict=False):
                a, b = p["lattice"][key], q["lattice"][key]
                axes[axis] = _coefficient(a["mean"], a["error"], b["mean"], b["error"], dt)
        out.append({"from_K": p["temperature_K"], "to_K": q["temperature_K"],
                    "temperature_K": 0.5 * (p["temperature_K"] + q["temperature_K"]),
                    "pressure_GPa": p["pressure_GPa"], "alpha_V_per_K": alpha_v,
                    "alpha_linear_per_K": _third(alpha_v), "alpha_axes_per_K": axes})
    return out


def fits(points: list[dict]) -> list[dict]:
    """Per pressure with three or more temperatures: the weighted least-squares slope of ln⟨V⟩
    against T (α_V over the whole range, 1/K) with its error, and χ² per degree of freedom (about 1
    when a straight line describes ln V(T) within the error bars)."""
    out = []
    groups: list[list[dict]] = []
    for p in points:
        if groups and _same_pressure(groups[-1][0], p):
            groups[-1].append(p)
        else:
            groups.append([p])
    for group in groups:
        t = np.array([p["temperature_K"] for p in group])
        if len(group) < 3 or np.ptp(t) == 0:
            continue
        v = np.array([p["volume_A3_per_atom"]["mean"] for p in group])
        sigma = np.array([p["volume_A3_per_atom"]["error"] for p in group]) / v
        if np.any(sigma <= 0):
            continue
        w = 1.0 / sigma**2
        y = np.log(v)
        t_bar = np.sum(w * t) / np.sum(w)
        sxx = np.sum(w * (t - t_bar) ** 2)
        slope = float(np.sum(w * (t - t_bar) * y) / sxx)
        intercept = float(np.sum(w * y) / np.sum(w) - slope * t_bar)
        chi2 = float(np.sum(w * (y - intercept - slope * t) ** 2))
        alpha_v = {"value": slope, "error": float(1.0 / math.sqrt(sxx))}
        out.append({"pressure_GPa": group[0]["pressure_GPa"], "temperatures": len(group),
                    "from_K": float(t.min()), "to_K": float(t.max()), "alpha_V_per_K": alpha_v,
                    "alpha_linear_per_K": _third(alpha_v), "chi2_per_dof": chi2 / (len(group) - 2)})
    return out


def _pm(c: dict, scale: float, digits: int) -> str:
    return f"{scale * c['value']:.{digits}f} ± {scale * c['error']:.{digits}f}"


def report_lines(result: dict) -> list[str]:
    """The table ``slhmc analyze RUN RUN ...`` prints."""
    points = result["points"]
    lines = [f"thermal expansion from {len(points)} NPT runs ({points[0]['formula'] or 'composition unknown'}); "
             "a_cub = (<V>/atom)^(1/3), the edge of a cube holding one atom (cubic lattice constant: "
             "(n <V>/atom)^(1/3), n atoms per conventional cell, fcc 4, bcc 2)",
             f"{'T (K)':>9} {'P (GPa)':>8} {'<V>/atom (Å³)':>21} {'a_cub (Å)':>21} {'trials':>7}  run"]
    for p in points:
        v, a = p["volume_A3_per_atom"], p["a_cub_A"]
        pressure = "n/a" if p["pressure_GPa"] is None else f"{p['pressure_GPa']:.3f}"
        lines.append(f"{p['temperature_K']:>9.1f} {pressure:>8} {v['mean']:>10.4f} ± {v['error']:<8.4f} "
                     f"{a['mean']:>10.5f} ± {a['error']:<8.5f} {p['trials'] - p['discarded_trials']:>7}  {p['run']}")
    pairs = result["coefficients"]
    if pairs:
        lines.append("between consecutive temperatures at one pressure (10⁻⁶/K): α_V = Δln<V>/ΔT, α = α_V/3")
        per_axis = any(c["alpha_axes_per_K"] is not None for c in pairs)
        lines.append(f"{'T1 -> T2 (K)':>17} {'α_V':>19} {'α (linear)':>19}" + ("  per axis α_a, α_b, α_c" if per_axis
                                                                              else ""))
        for c in pairs:
            axes = "" if c["alpha_axes_per_K"] is None else "  " + ", ".join(
                f"{_pm(c['alpha_axes_per_K'][axis], 1e6, 2)}" for axis in AXES)
            lines.append(f"{c['from_K']:>7.1f} -> {c['to_K']:>7.1f} {_pm(c['alpha_V_per_K'], 1e6, 2):>19} "
                         f"{_pm(c['alpha_linear_per_K'], 1e6, 2):>19}{axes}")
    else:
        lines.append("no two runs at one pressure and different temperatures: no expansion coefficient")
    for f in result["fits"]:
        lines.append(f"fit of ln<V> against T, {f['from_K']:.0f}-{f['to_K']:.0f} K ({f['temperatures']} runs): "
                     f"α_V = {_pm(f['alpha_V_per_K'], 1e6, 2)}, α = {_pm(f['alpha_linear_per_K'], 1e6, 2)} "
                     f"10⁻⁶/K, χ²/dof {f['chi2_per_dof']:.2f}")
    lines.append("wrote " + ", ".join(str(Path(result["out"]) / name) for name in (EXPANSION_JSON, *result["plots"])))
    return lines


def thermal_expansion(run_dirs: list[str | Path], out_dir: str | Path = ".", plots: bool = True,
                      points: list[dict] | None = None) -> dict:
    """Thermal expansion of NPT runs at several temperatures: writes expansion.json (and with
    ``plots`` expansion.png) into ``out_dir`` and returns what it wrote, with ``report``, the
    printed lines. ``points``: :func:`expansion_points` of ``run_dirs`` if already computed.
    ExpansionError when the runs give none."""
    out = Path(out_dir)
    points = expansion_points(run_dirs) if points is None else points
    result = {"points": points, "coefficients": coefficients(points), "fits": fits(points), "out": str(out),
              "plots": []}
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        plotting.plot_expansion(out / EXPANSION_PNG, points, result["coefficients"])
        result["plots"] = [EXPANSION_PNG]
    (out / EXPANSION_JSON).write_text(json.dumps(result, indent=2))
    result["report"] = report_lines(result)
    return result
