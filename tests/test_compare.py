"""``slhmc analyze DIR --compare OTHER ...`` on small real runs: a run against itself differs by
0 σ; against ML-MD at a third of its temperature (as an md directory and as a bare trajectory file
that ase.io reads, the way an AIMD run would be given) g(r) and E_pot differ by many σ."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from slhmc.analysis.compare import largest_difference, typical_largest_sigma

from .conftest import ROOT
from .runs import SLHMC, env, write_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 40-trial SLHMC run of Cu32 at 300 K and ML-MD at 100 K with its network (colder: inside the
    range the network was trained on, so no extrapolation)."""
    tmp = tmp_path_factory.mktemp("compare")
    run = tmp / "run"
    config = write_config(tmp, trials=40)
    # the chain waits for each refit: the MD gets a network refitted on chain labels however slow the machine
    config.write_text(config.read_text().replace("seed = 11", "seed = 11\ndeterministic = true"))
    proc = subprocess.run([*SLHMC, "run", str(config), "--out", str(run), "--no-progress"],
                          env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = tmp / "md100"
    proc = subprocess.run([*SLHMC, "md", str(run), "--structure", str(ROOT / "examples/cu32_emt/cu32.xyz"),
                           "--temperature", "100", "--steps", "300", "--timestep", "2", "--equilibrate", "200",
                           "--stride", "3", "--out", str(md), "--no-progress"],
                          env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, md


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SLHMC, "analyze", *args], env=env(), capture_output=True, text=True, timeout=300)


def test_a_run_compared_with_itself_differs_by_nothing(runs):
    run, _ = runs
    proc = analyze(str(run), "--compare", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run / "compare.json").read_text())
    observables = {d["observable"] for d in result["differences"]}
    assert observables == {"g(r) Cu-Cu", "E_pot distribution", "<E_pot>"}
    assert all(d["sigma"] == 0.0 for d in result["differences"])
    assert "g(r) Cu-Cu: 0.0 σ" in proc.stdout and "= 0.0 σ" in proc.stdout
    curves = result["rdf"][str(run)]["Cu-Cu"]
    assert max(curves["error"]) > 0  # a band, not a line: the chain states differ from each other
    for name in ("compare_rdf.png", "compare_epot.png"):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"


def test_a_run_against_md_at_a_third_of_its_temperature(runs):
    run, md = runs
    trajectory = md / "repeat_0" / "trajectory.extxyz"  # a bare file, with the energies ASE wrote into it
    proc = analyze(str(run), "--compare", str(md), f"{trajectory}@10:")
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    result = json.loads((run / "compare.json").read_text())
    sigma = {(d["source"], d["observable"]): d["sigma"] for d in result["differences"]}
    for source in (str(md), f"{trajectory}@10:"):
        assert sigma[(source, "g(r) Cu-Cu")] > 5  # the first peak is higher and narrower at 100 K
        assert sigma[(source, "<E_pot>")] > 5  # about 3/2 k·200 K = 26 meV/atom lower
        # bin by bin the power is limited by the run's 36 correlated chain states: a few σ at most
        assert sigma[(source, "E_pot distribution")] > 2
    file_source = next(s for s in result["sources"] if s["kind"] == "file")
    assert file_source["frames"] == 101 - 10  # FILE@10: skipped the first 10 frames
    e_run, e_md = (result["e_pot"][k]["mean"] for k in (str(run), str(md)))
    assert 0.015 < e_run - e_md < 0.04  # eV/atom


def test_compare_refuses_what_it_cannot_read(runs, tmp_path):
    run, _ = runs
    proc = analyze(str(run), "--compare", str(tmp_path / "nowhere.traj"))
    assert proc.returncode == 2 and "no such file or directory" in proc.stderr
    proc = analyze(str(run), "--compare", str(tmp_path))  # an empty directory: neither a run nor md
    assert proc.returncode == 2 and "neither a run" in proc.stderr


def test_largest_difference_and_what_is_typical():
    a, b = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 1.5, 2.0, 3.0])
    err = np.array([0.0, 0.1, 0.1, 0.0])
    z, k, n = largest_difference(a, err, b, err)
    assert k == 1 and n == 3 and z == pytest.approx(0.5 / np.hypot(0.1, 0.1))  # bin 0 (zero in both) not compared
    assert largest_difference(a, 0 * err, a + 1, 0 * err)[0] == np.inf  # a difference without error
    assert 2.0 < typical_largest_sigma(40) < 3.0 and typical_largest_sigma(1) == pytest.approx(0.674, abs=1e-3)
