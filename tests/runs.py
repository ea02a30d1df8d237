"""What the end-to-end tests share: configs for short real runs, starting and stopping real server
and worker processes, waiting on them, and the checks every finished run must pass."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ase import units
from ase.calculators.emt import EMT
from ase.io import read

from slhmc.potential.training import Label
from slhmc.validation import rattled_emt_labels

from .conftest import ROOT, TESTS

SLHMC = [sys.executable, "-m", "slhmc"]


def write_config(tmp_path: Path, trials: int = 30, dft: int = 1, calculator: str = "emt",
                 options: str = "", timeout: float = 10.0, **training) -> Path:
    train = {"bootstrap": 8, "interval": 12, "max_steps": 8, **training}
    text = f"""
[system]
structure = "{ROOT / 'examples/cu32_emt/cu32.xyz'}"
temperature = 300.0
[reference]
calculator = "{calculator}"
{options}
[hmc]
trials = {trials}
md_steps = 5
timestep = 2.0
seed = 11
[potential]
cutoff = 4.5
hidden = [10, 10]
[training]
{chr(10).join(f"{k} = {v}" for k, v in train.items())}
[workers]
dft = {dft}
heartbeat = 0.5
timeout = {timeout}
"""
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def make_npt(config: Path, pressure_GPa: float = 1.0, adapt_until: int = 50, cell: str = "isotropic") -> None:
    """Turn a write_config config into an NPT one: half the trials move the cell (3 inner steps),
    the volume step adapted before trial ``adapt_until``."""
    text = config.read_text()
    text = text.replace("temperature = 300.0", f"temperature = 300.0\npressure = {pressure_GPa}", 1)
    text = text.replace("seed = 11", f'seed = 11\ncell = "{cell}"\nvolume_probability = 0.5\n'
                        f"volume_inner_steps = 3\nvolume_step = 0.01\nvolume_adapt_until = {adapt_until}", 1)
    config.write_text(text)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def env() -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = os.pathsep.join([str(TESTS), e.get("PYTHONPATH", "")])
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_trials(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]


def check_run(run: Path, trials: int, bootstrap: int) -> list[dict]:
    """What every finished run must satisfy, whatever happened to its processes."""
    records = read_trials(run)
    assert [r["trial"] for r in records] == list(range(trials))  # each trial exactly once, in order
    dataset = read(run / "dataset.extxyz", index=":")
    chain_labels = [a for a in dataset if a.info["source"] != "speculative"]  # pre-fetched, then dropped
    # every trial is labelled but an NPT cell trial whose inner chain did not move (nothing new to label)
    unmoved = [r for r in records if r.get("kind") == "cell" and r["cell_steps_accepted"] == 0]
    assert all(r["label_id"] is None and r["e_ref"] is None and not r["accepted"] for r in unmoved)
    assert len(chain_labels) == 1 + bootstrap + trials - len(unmoved)
    assert [a.info["label_id"] for a in dataset] == list(range(len(dataset)))
    # the energies the chain used are EMT's, recomputed here independently
    labelled = [r for r in records if r["label_id"] is not None]
    for r in labelled[:: max(1, trials // 6)]:
        atoms = dataset[r["label_id"]].copy()
        atoms.calc = EMT()
        # extxyz stores positions to 1e-8 Å, so agreement is to ~1e-8 eV, not to the last bit
        assert atoms.get_potential_energy() == pytest.approx(r["e_ref"], abs=1e-6)
        if r.get("kind", "position") == "position":
            assert r["delta_h"] == pytest.approx(r["k_new"] + r["e_ref"] - r["k_old"] - r["e_ref_old"], abs=1e-9)
        else:  # the self-learning correction of a cell trial
            kT = units.kB * json.loads((run / "config.json").read_text())["config"]["system"]["temperature"]
            error = (r["e_ref"] - r["e_ml"]) - (r["e_ref_old"] - r["e_ml_start"])
            assert r["log_acceptance"] == pytest.approx(-error / kT, abs=1e-9)
    # the chain state follows the accept/reject record
    e_chain = None
    for r in records:
        if e_chain is not None:
            assert r["e_ref_old"] == pytest.approx(e_chain)
        e_chain = r["e_chain"]
        assert e_chain == (r["e_ref"] if r["accepted"] else r["e_ref_old"])
    ckpt = json.loads((run / "checkpoint.json").read_text())
    assert ckpt["trial"] == trials and ckpt["n_labels"] == len(dataset)
    assert (run / "models" / "model_0000.safetensors").exists()
    return records


def run_frozen(config, run) -> list[dict]:
    """`slhmc run` through the real processes; the trial records of a run whose network is frozen."""
    proc = subprocess.run([*SLHMC, "run", str(config), "--out", str(run), "--no-progress"],
                          env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = read_trials(run)
    assert {t["model"] for t in trials} == {0}
    return trials


def stop_all(server: subprocess.Popen, workers: dict) -> None:
    for proc in [server, *workers.values()]:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(path: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} did not appear in {path} within {timeout_s} s")


def start_worker(role: str, name: str, address: str, extra_env: dict | None = None,
                 args: tuple = ()) -> subprocess.Popen:
    return subprocess.Popen([*SLHMC, "worker", role, "--connect", address, "--name", name, "--timeout", "2", *args],
                            env={**env(), **(extra_env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_server(config, run, address: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*SLHMC, "server", str(config), "--out", str(run), "--bind", address, "--no-progress",
                             *args], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def start_workers(address: str, specs: list[tuple[str, str]], **kwargs) -> dict[str, subprocess.Popen]:
    return {name: start_worker(role, name, address, **kwargs) for role, name in specs}


def wait_for_success(server: subprocess.Popen, run) -> str:
    """Wait for the server to finish its run with exit status 0; returns its log."""
    _, err = server.communicate(timeout=600)
    assert server.returncode == 0, err[-3000:]
    return (run / "server.log").read_text()


def wait_for_trials(run, n: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (run / "trials.jsonl").exists() and len(read_trials(run)) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} trials after {timeout_s} s")


def without_timings(records: list[dict]) -> list[dict]:
    timing = {"wall_seconds", "mlmd_seconds", "dft_seconds"}
    return [{k: v for k, v in r.items() if k not in timing} for r in records]


def emt_labels(n: int, seed: int) -> list[Label]:
    return rattled_emt_labels(n, seed, repeat=(2, 1, 1), rattle_A=0.07, strain=0.015)
