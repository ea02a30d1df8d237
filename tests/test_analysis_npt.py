"""``slhmc analyze`` of NPT runs, on run directories written by hand: an AR(1) volume series whose
mean, variance and autocorrelation time are known, the equilibration cut at volume_adapt_until,
acceptance by trial kind, cell trials without a reference energy, the thermal expansion of runs at
three temperatures, and an NVT run that is analysed as before."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.io import write

from slhmc.analysis import analyze
from slhmc.analysis.chain import BURN_IN_DIVISOR
from slhmc.analysis.expansion import ExpansionError, expansion_points, thermal_expansion

from .runs import SLHMC, env

N_ATOMS = 4  # a conventional fcc Cu cell: small files, fast g(r)
PHI, SIGMA = 0.8, 0.15  # AR(1) of the volume per atom (Å³): tau = (1 + phi)/(1 - phi) = 9 trials
VAR_PER_ATOM = SIGMA**2 / (1 - PHI**2)  # its stationary variance (Å⁶)


def ar1(rng: np.random.Generator, n: int, sigma: float = SIGMA) -> np.ndarray:
    """A stationary AR(1) series of mean 0, x_t = PHI x_{t-1} + sigma ε_t."""
    x = np.empty(n)
    x[0] = rng.normal(0.0, sigma / math.sqrt(1 - PHI**2))
    for t in range(1, n):
        x[t] = PHI * x[t - 1] + sigma * rng.normal()
    return x


def write_npt_run(path, *, temperature=600.0, pressure=0.0, v_per_atom=12.0, trials=1500, adapt_until=400,
                  anisotropic=False, seed=0, config="json", pressure_key=True, sigma=SIGMA, stride=None) -> dict:
    """An NPT run directory: trials.jsonl, chain.extxyz, config.json (or config.toml). Before
    ``adapt_until`` the volume sits 10 % high (an equilibration that must be cut), after it V/atom is
    ``v_per_atom`` + AR(1). Every 4th trial is a cell trial, every 3rd of those did not move (e_ref
    null); the rest are accepted alternately. ``stride``: a chain frame (with its ``trial`` info, as the
    server writes it) after every stride-th trial; default: one after every trial, without the info.
    Returns what was written, for the checks."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    v = (v_per_atom + ar1(rng, trials, sigma)) * N_ATOMS
    v[:adapt_until] *= 1.10
    base = bulk("Cu", "fcc", a=3.6, cubic=True)
    records, frames, cells = [], [], []
    e_old = -3.5 * N_ATOMS
    for t in range(trials):
        if anisotropic:  # a, b, c of ratio 1 : 1.02 : 1.04 and gamma = 90 ± 1 degree, volume v[t]
            gamma = math.radians(90.0 + rng.normal(0.0, 1.0))
            a = (v[t] / (1.02 * 1.04 * math.sin(gamma))) ** (1 / 3)
            cell = np.array([[a, 0, 0], [1.02 * a * math.cos(gamma), 1.02 * a * math.sin(gamma), 0], [0, 0, 1.04 * a]])
        else:
            cell = np.eye(3) * v[t] ** (1 / 3)
        cells.append(cell)
        e_new = -3.5 * N_ATOMS + rng.normal(0.0, 0.02)
        kind = "cell" if t % 4 == 3 else "position"
        moved = not (kind == "cell" and t % 12 == 11)
        accepted = moved and t % 2 == 1 if kind == "cell" else t % 3 != 0
        err = 0.002 * ((t % 5) - 2)  # ΔE error (eV), the same formula for both kinds
        record = {"trial": t, "kind": kind, "accepted": accepted, "e_ref": e_new if moved else None,
                  "e_ml": e_new + 0.1 + err, "e_ml_start": e_old + 0.1, "e_ref_old": e_old,
                  "e_chain": e_new if accepted else e_old, "model": t // 500, "n_atoms": N_ATOMS,
                  "label_id": t, "mlmd_seconds": 0.1, "dft_seconds": 0.2, "wall_seconds": t, "volume": float(v[t])}
        if kind == "position":
            record.update({"delta_h": 0.01 * ((t % 7) - 3), "k_old": 0.1, "k_new": 0.1, "h_ml_drift": 0.0})
        else:
            record.update({"delta_h": None, "k_old": None, "k_new": None, "h_ml_drift": None,
                           "volume_proposed": float(v[t] * 1.01), "cell_steps": 10,
                           "cell_steps_accepted": 4 if moved else 0, "volume_step": 0.02 if t < adapt_until else 0.015,
                           "log_acceptance": min(0.0, err / (units.kB * temperature))})
        if anisotropic:
            record["cell"] = cell.tolist()
        if accepted:
            e_old = e_new
        records.append(record)
        atoms = base.copy()
        atoms.set_cell(cell, scale_atoms=True)
        if stride is None:
            frames.append(atoms)
        elif (t + 1) % stride == 0:
            atoms.info["trial"] = t
            frames.append(atoms)
    (path / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write(path / "chain.extxyz", frames)
    hmc = {"cell": "anisotropic" if anisotropic else "isotropic", "volume_adapt_until": adapt_until}
    system = {"structure": "start.extxyz", "temperature": temperature}
    if pressure_key:
        system["pressure"] = pressure
    if config == "json":
        (path / "config.json").write_text(json.dumps({"config": {"system": system, "hmc": hmc}}))
    else:  # slhmc.run's copy of the config file, volume_adapt_until left at its default (200)
        text = f'[system]\nstructure = "start.extxyz"\ntemperature = {temperature}\n'
        text += "" if not pressure_key else f"pressure = {pressure}\n"
        (path / "config.toml").write_text(text + f'[hmc]\ncell = "{hmc["cell"]}"\n')
    return {"volume": v, "records": records, "cells": np.array(cells), "mass": float(base.get_masses().sum())}


def summary_of(path) -> dict:
    assert analyze(path, plots=False) == 0
    return json.loads((path / "summary.json").read_text())


def test_volume_averages_error_bars_and_the_equilibration_cut(tmp_path):
    run = write_npt_run(tmp_path, trials=1500, adapt_until=400)
    s = summary_of(tmp_path)
    npt = s["npt"]
    assert npt["discarded_trials"] == 400 > 1500 // BURN_IN_DIVISOR  # volume_adapt_until, the later cut
    assert s["e_pot_eV_per_atom"]["discarded_trials"] == 400
    kept = run["volume"][400:]
    assert npt["samples"] == len(kept) == 1100
    v = npt["volume_A3"]
    assert v["mean"] == pytest.approx(kept.mean(), rel=1e-12)  # exactly the trials after the cut
    assert npt["volume_A3_per_atom"]["mean"] == pytest.approx(kept.mean() / N_ATOMS, rel=1e-12)
    # the error bar: sqrt(var tau / N) of the AR(1), tau = 9; and the true mean within it
    expected_error = N_ATOMS * math.sqrt(VAR_PER_ATOM * (1 + PHI) / (1 - PHI) / len(kept))
    assert 0.6 < v["error"] / expected_error < 1.6
    assert 4 < v["tau_trials"] < 16
    assert abs(v["mean"] - 12.0 * N_ATOMS) < 4 * v["error"]
    assert npt["volume_A3_per_atom"]["error"] == pytest.approx(v["error"] / N_ATOMS, rel=1e-9)
    # ρ = M/V, M of Cu4 in g over V in cm³
    rho = run["mass"] * units._amu * 1e3 / (kept * 1e-24)
    assert npt["density_g_cm3"]["mean"] == pytest.approx(rho.mean(), rel=1e-12)
    assert npt["density_g_cm3"]["mean"] == pytest.approx(4 * 63.546 / 6.02214076e23 / (48e-24), rel=0.01)
    var = npt["volume_variance_A6"]
    assert var["mean"] == pytest.approx(np.var(kept, ddof=1), rel=1e-12)
    assert abs(var["mean"] - N_ATOMS**2 * VAR_PER_ATOM) < 4 * var["error"]
    assert 0 < var["error"] < 0.3 * var["mean"]
    bulk_modulus = units.kB * 600.0 * kept.mean() / np.var(kept, ddof=1) / units.GPa
    assert npt["bulk_modulus_GPa"]["value"] == pytest.approx(bulk_modulus, rel=1e-9)
    assert npt["pressure_GPa"] == 0.0 and npt["cell"] == "isotropic" and npt["volume_adapt_until"] == 400
    # an isotropic run's lattice lengths come from the chain frames: a = V^(1/3) for the cubic cell
    assert npt["lattice"]["a_A"]["mean"] == pytest.approx(np.mean(kept ** (1 / 3)), rel=1e-9)
    assert npt["lattice"]["gamma_deg"]["mean"] == pytest.approx(90.0)


def test_a_short_adaptation_leaves_the_usual_burn_in(tmp_path):
    write_npt_run(tmp_path, trials=1000, adapt_until=30)
    assert summary_of(tmp_path)["npt"]["discarded_trials"] == 1000 // BURN_IN_DIVISOR


def test_acceptance_by_kind_and_cell_trials_without_a_reference_energy(tmp_path):
    run = write_npt_run(tmp_path, trials=600, adapt_until=200)
    s = summary_of(tmp_path)
    records = run["records"]
    kinds = s["npt"]["acceptance_by_kind"]
    position = [r for r in records if r["kind"] == "position"]
    cell = [r for r in records if r["kind"] == "cell"]
    moved = [r for r in cell if r["e_ref"] is not None]
    assert kinds["position"]["trials"] == len(position) == 450
    assert kinds["position"]["acceptance"] == pytest.approx(np.mean([r["accepted"] for r in position]))
    assert kinds["cell"]["trials"] == 150 and kinds["cell"]["moved"] == len(moved) == 100
    assert kinds["cell"]["acceptance"] == pytest.approx(np.mean([r["accepted"] for r in cell]))
    assert kinds["cell"]["acceptance_of_moved"] == pytest.approx(np.mean([r["accepted"] for r in moved]))
    assert kinds["cell"]["inner_acceptance"] == pytest.approx(4 * 100 / (10 * 150))
    assert kinds["cell"]["volume_step_first"] == 0.02 and kinds["cell"]["volume_step_last"] == 0.015
    kT = units.kB * 600.0
    err = np.array([0.002 * ((r["trial"] % 5) - 2) for r in moved])
    assert kinds["cell"]["delta_e_error_rms_kT"] == pytest.approx(np.sqrt(np.mean(err**2)) / kT)
    assert kinds["cell"]["acceptance_predicted"] == pytest.approx(np.mean(np.minimum(1.0, np.exp(err / kT))))
    # the ΔE error columns: every labelled trial, position and cell, none of those without e_ref
    labelled = [r for r in records if r["e_ref"] is not None]
    err_all = np.array([0.002 * ((r["trial"] % 5) - 2) for r in labelled])
    d = s["delta_e"]
    assert d["delta_e_error_rms_mev_per_atom"] == pytest.approx(1e3 * np.sqrt(np.mean((err_all / N_ATOMS) ** 2)))
    # acceptance_expected: min(1, exp(-ΔH/kT)) of position trials, min(1, exp(err/kT)) of cell trials
    expected = [min(1.0, math.exp(-r["delta_h"] / kT)) if r["kind"] == "position"
                else min(1.0, math.exp(0.002 * ((r["trial"] % 5) - 2) / kT)) for r in labelled]
    assert d["acceptance_expected"] == pytest.approx(np.mean(expected))
    model0 = s["models"]["0"]
    assert model0["trials"] == 500 and model0["ml_error_rms_mev_per_atom"] == pytest.approx(
        1e3 * 0.1 / N_ATOMS, rel=0.05)


def test_anisotropic_lattice_lengths_and_angles(tmp_path):
    run = write_npt_run(tmp_path, trials=800, adapt_until=200, anisotropic=True)
    lattice = summary_of(tmp_path)["npt"]["lattice"]
    cells = run["cells"][200:]
    a = np.linalg.norm(cells[:, 0], axis=1)
    b = np.linalg.norm(cells[:, 1], axis=1)
    assert lattice["a_A"]["mean"] == pytest.approx(a.mean(), rel=1e-9)
    assert lattice["b_A"]["mean"] == pytest.approx(1.02 * a.mean(), rel=1e-9)
    assert lattice["c_A"]["mean"] == pytest.approx(1.04 * a.mean(), rel=1e-9)
    assert lattice["alpha_deg"]["mean"] == pytest.approx(90.0) and lattice["beta_deg"]["mean"] == pytest.approx(90.0)
    assert abs(lattice["gamma_deg"]["mean"] - 90.0) < 4 * lattice["gamma_deg"]["error"]
    assert 0.5 < lattice["gamma_deg"]["error"] / (1.0 / math.sqrt(600)) < 2.0  # independent draws, σ = 1°
    assert b.mean() > 0


def test_a_config_toml_without_volume_adapt_until_takes_its_default(tmp_path):
    write_npt_run(tmp_path, trials=1000, adapt_until=200, config="toml")
    npt = summary_of(tmp_path)["npt"]
    assert npt["volume_adapt_until"] == 200 and npt["discarded_trials"] == 200


def test_plots_of_an_npt_run(tmp_path):
    write_npt_run(tmp_path, trials=600, adapt_until=200, anisotropic=True)
    assert analyze(tmp_path) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    for name in ("volume.png", "volume_histogram.png", "lattice.png", "energy.png", "ml_error.png",
                 "delta_e_error.png", "rdf.png", "msd.png"):
        assert name in s["plots"] and (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_an_nvt_run_is_analysed_as_before(tmp_path):
    """No npt block, no volume plots, the burn-in 1/10 whatever hmc.volume_adapt_until says."""
    run = write_npt_run(tmp_path, trials=300, adapt_until=200, pressure_key=False)
    for r in run["records"]:  # an NVT record: no kind, no volume, every trial labelled
        for key in ("kind", "volume", "volume_proposed", "cell_steps", "cell_steps_accepted", "volume_step",
                    "log_acceptance"):
            r.pop(key, None)
        r.update({"e_ref": r["e_ref"] if r["e_ref"] is not None else r["e_ref_old"], "delta_h": 0.0, "k_old": 0.1,
                  "k_new": 0.1, "h_ml_drift": 0.0})
    (tmp_path / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run["records"]))
    assert analyze(tmp_path) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert "npt" not in s and s["e_pot_eV_per_atom"]["discarded_trials"] == 30
    assert not any(p.startswith(("volume", "lattice")) for p in s["plots"])
    assert not (tmp_path / "volume.png").exists()


def three_temperatures(tmp_path) -> tuple[list, dict]:
    """NPT runs at 300, 600, 900 K with V/atom 11.8, 11.9, 12.05 Å³ (AR(1) of a third of the usual
    spread around each: α_V of about 3·10⁻⁵/K, known to about 10 %)."""
    means = {300.0: 11.8, 600.0: 11.9, 900.0: 12.05}
    dirs, volumes = [], {}
    for k, (temperature, mean) in enumerate(means.items()):
        d = tmp_path / f"run_{temperature:.0f}K"
        volumes[temperature] = write_npt_run(d, temperature=temperature, v_per_atom=mean, trials=1000,
                                             adapt_until=200, seed=10 + k, sigma=SIGMA / 3)["volume"][200:] / N_ATOMS
        dirs.append(d)
    return dirs, volumes


def test_thermal_expansion(tmp_path):
    dirs, volumes = three_temperatures(tmp_path)
    result = thermal_expansion(list(reversed(dirs)), tmp_path / "out")  # sorted by temperature
    points = result["points"]
    assert [p["temperature_K"] for p in points] == [300.0, 600.0, 900.0]
    for p in points:
        v = volumes[p["temperature_K"]]
        assert p["volume_A3_per_atom"]["mean"] == pytest.approx(v.mean(), rel=1e-12)
        assert p["a_cub_A"]["mean"] == pytest.approx(v.mean() ** (1 / 3))
        assert p["a_cub_A"]["error"] == pytest.approx(p["a_cub_A"]["mean"] * p["volume_A3_per_atom"]["error"]
                                                      / (3 * v.mean()))
        assert p["formula"] == "Cu" and p["pressure_GPa"] == 0.0
    pairs = result["coefficients"]
    assert [(c["from_K"], c["to_K"]) for c in pairs] == [(300.0, 600.0), (600.0, 900.0)]
    for c, (t1, t2), true in zip(pairs, [(300.0, 600.0), (600.0, 900.0)],
                                 [math.log(11.9 / 11.8) / 300, math.log(12.05 / 11.9) / 300], strict=True):
        p1, p2 = (next(p for p in points if p["temperature_K"] == t) for t in (t1, t2))
        v1, v2 = p1["volume_A3_per_atom"], p2["volume_A3_per_atom"]
        assert c["alpha_V_per_K"]["value"] == pytest.approx(math.log(v2["mean"] / v1["mean"]) / 300)
        assert c["alpha_V_per_K"]["error"] == pytest.approx(
            math.hypot(v1["error"] / v1["mean"], v2["error"] / v2["mean"]) / 300)
        assert c["alpha_linear_per_K"]["value"] == pytest.approx(c["alpha_V_per_K"]["value"] / 3)
        assert abs(c["alpha_V_per_K"]["value"] - true) < 4 * c["alpha_V_per_K"]["error"]
        assert c["alpha_V_per_K"]["error"] < 0.25 * true
    fit = result["fits"][0]
    assert fit["temperatures"] == 3 and fit["alpha_V_per_K"]["value"] == pytest.approx(
        math.log(12.05 / 11.8) / 600, rel=0.2)
    written = json.loads((tmp_path / "out" / "expansion.json").read_text())
    assert written["coefficients"] == json.loads(json.dumps(pairs))
    assert (tmp_path / "out" / "expansion.png").read_bytes()[:4] == b"\x89PNG"


def test_thermal_expansion_refuses_an_nvt_run_and_mixed_compositions(tmp_path):
    write_npt_run(tmp_path / "npt", trials=300, adapt_until=0)
    write_npt_run(tmp_path / "nvt", trials=300, adapt_until=0, pressure_key=False)
    with pytest.raises(ExpansionError, match="NVT run"):
        expansion_points([tmp_path / "npt", tmp_path / "nvt"])
    write_npt_run(tmp_path / "ni", trials=300, adapt_until=0)
    frames = (tmp_path / "ni" / "chain.extxyz").read_text().replace("Cu ", "Ni ")
    (tmp_path / "ni" / "chain.extxyz").write_text(frames)
    with pytest.raises(ExpansionError, match="different compositions"):
        expansion_points([tmp_path / "npt", tmp_path / "ni"])


def test_the_command_line(tmp_path):
    dirs, _ = three_temperatures(tmp_path)
    out = tmp_path / "expansion"
    proc = subprocess.run([*SLHMC, "analyze", *map(str, dirs), "--out", str(out)], env=env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "thermal expansion from 3 NPT runs (Cu)" in proc.stdout and "300.0 ->   600.0" in proc.stdout
    assert proc.stdout.count("NPT (isotropic cell, P = 0 GPa)") == 3  # each run's own report first
    assert (out / "expansion.json").exists() and (out / "expansion.png").exists()
    assert all((d / "summary.json").exists() for d in dirs)
    nvt = tmp_path / "nvt"
    write_npt_run(nvt, trials=100, adapt_until=0, pressure_key=False)
    proc = subprocess.run([*SLHMC, "analyze", str(dirs[0]), str(nvt)], env=env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "is an NVT run" in proc.stderr


def test_a_run_still_in_its_adaptation(tmp_path):
    """While every trial is before volume_adapt_until there is no average yet, but a report and plots."""
    write_npt_run(tmp_path, trials=50, adapt_until=200)
    assert analyze(tmp_path) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["npt"]["discarded_trials"] == 50 and s["npt"]["volume_A3"] is None and s["e_pot_eV_per_atom"] is None
    assert "volume.png" in s["plots"] and "volume_histogram.png" not in s["plots"]


def test_chain_frames_every_stride_trials(tmp_path):
    """[output] stride = 5: the lattice of an isotropic run from the frames after the cut, by their trial."""
    run = write_npt_run(tmp_path, trials=1000, adapt_until=300, stride=5)
    npt = summary_of(tmp_path)["npt"]
    kept = run["volume"][300:][4::5]  # the frames after trials 304, 309, ...
    assert npt["lattice"]["a_A"]["mean"] == pytest.approx(np.mean(kept ** (1 / 3)), rel=1e-9)
    assert npt["volume_A3"]["mean"] == pytest.approx(run["volume"][300:].mean(), rel=1e-12)  # from every record
