"""run_scripts/slurm: the scripts parse, activate the environment, ask for what README says, and
wait for / re-read the address file that ``slhmc server --address-file`` writes after its bind.

No Slurm here: each script runs under bash with a stand-in ``slhmc`` (a fake venv whose activate
puts it on PATH) that records its arguments; the address file comes from a real server."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from slhmc.config import load_local_reference
from slhmc.server.broker import connect_address

from .conftest import ROOT
from .runs import SLHMC, env, free_port, start_server, write_config

SLURM = ROOT / "run_scripts" / "slurm"
SCRIPTS = [*sorted(SLURM.glob("*.sbatch")), *sorted((ROOT / "run_scripts").glob("*.sh"))]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _sbatch(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", (SLURM / script).read_text(), re.M))


def test_what_the_scripts_ask_for():
    assert _sbatch("ml_workers.sbatch")["gres"] == "gpu:1"  # README: the ML workers on a GPU node
    assert int(_sbatch("dft_workers.sbatch")["ntasks"]) > 1  # `srun pw.x` gets the job's ranks
    for script in SLURM.glob("*.sbatch"):
        assert 'source "${SLHMC_VENV:-$HOME/slhmc/.venv}/bin/activate"' in script.read_text(), script.name
    readme = (SLURM / "README.md").read_text()
    for name in ("SLHMC_VENV", "SLHMC_PORT", "SLHMC_KEYS", "SLHMC_MAX_IDLE", "SLHMC_POLL_S", "dft_local.toml",
                 "--gres=gpu:1", "server.address"):
        assert name in readme, name
    # the example DFT worker config has only [reference], and it loads as such
    local = SLURM / "dft_local.toml"
    assert [line for line in local.read_text().splitlines() if line.startswith("[")] == [
        "[reference]", "[reference.options]"]
    cfg = load_local_reference(local)
    assert cfg.reference.calculator == "espresso" and cfg.reference.options["command"] == "srun pw.x"


def _fake_venv(tmp_path: Path, script_body: str) -> tuple[Path, Path]:
    """A venv whose activate puts a stand-in ``slhmc`` on PATH; it logs one line per call."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
    slhmc = venv / "bin" / "slhmc"
    slhmc.write_text(f'#!/bin/bash\necho "$*" >> "{log}"\n{script_body}\n')
    slhmc.chmod(0o755)
    return venv, log


def _script_env(venv: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "SLHMC_VENV": str(venv), "SLHMC_KEYS": "/keys", "SLHMC_POLL_S": "0.05", **extra}


def test_server_script_binds_then_writes_the_address(tmp_path):
    venv, log = _fake_venv(tmp_path, 'test -e "$RUN/server.address" && echo stale-address-present >> "$LOG"; exit 0')
    run = tmp_path / "run"
    run.mkdir()
    (run / "server.address").write_text("tcp://old-node:5555\n")  # a previous server's
    proc = subprocess.run(["bash", str(SLURM / "server.sbatch"), "config.toml", str(run), "--resume"],
                          env=_script_env(venv, SLHMC_PORT="6001", RUN=str(run), LOG=str(log)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls == [f"server config.toml --out {run} --bind tcp://0.0.0.0:6001 --keys /keys --no-progress "
                     f"--address-file {run}/server.address --resume"]


def test_dft_workers_wait_for_the_address_and_read_it_again(tmp_path):
    """The worker waits for server.address; when it gives up on a gone server (exit status 1) it
    reads the file again and connects to the new address; status 0 (run finished) ends the job."""
    run = tmp_path / "run"
    run.mkdir()
    # first call: the server is gone, and a new one (on another node) has written its address
    venv, log = _fake_venv(tmp_path, f'''n=$(wc -l < "{tmp_path}/calls.log")
if [ "$n" -eq 1 ]; then echo tcp://node-b:5555 > "{run}/server.address"; exit 1; fi
exit 0''')
    proc = subprocess.Popen(["bash", str(SLURM / "dft_workers.sbatch"), str(run), "dft_local.toml"],
                            env=_script_env(venv, SLURM_ARRAY_TASK_ID="3", SLHMC_MAX_IDLE="7"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert proc.poll() is None and not log.exists()  # waiting for the server's address
    (run / "server.address").write_text("tcp://node-a:5555\n")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    calls = log.read_text().splitlines()
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    common = f"worker dft --keys /keys --name dft-3-{host} --max-idle 7 --config dft_local.toml --connect"
    assert calls == [f"{common} tcp://node-a:5555", f"{common} tcp://node-b:5555"]
    assert "reading" in err and "server.address again" in err


def _run_worker_script(tmp_path: Path, script: str, slhmc_body: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run a worker sbatch script against a run whose server listens at tcp://node-a:5555, with a
    fake slhmc (``slhmc_body``) that logs its arguments; returns the script's process and the log."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "server.address").write_text("tcp://node-a:5555\n")
    venv, log = _fake_venv(tmp_path, slhmc_body)
    proc = subprocess.run(["bash", str(SLURM / script), str(run)], env=_script_env(venv), capture_output=True,
                          text=True, timeout=60)
    return proc, log


def test_dft_workers_stop_on_a_config_error(tmp_path):
    proc, log = _run_worker_script(tmp_path, "dft_workers.sbatch", "exit 2")
    assert proc.returncode == 2 and len(log.read_text().splitlines()) == 1


def test_ml_workers_start_both_roles(tmp_path):
    proc, log = _run_worker_script(tmp_path, "ml_workers.sbatch", "exit 0")
    assert proc.returncode == 0, proc.stderr
    calls = sorted(log.read_text().splitlines())
    assert [c.split()[:2] for c in calls] == [["worker", "mlmd"], ["worker", "trainer"]]
    assert all("--connect tcp://node-a:5555" in c and "--keys /keys" in c for c in calls)


def test_connect_address():
    host = socket.gethostname()
    assert connect_address("tcp://0.0.0.0:5555") == f"tcp://{host}:5555"
    assert connect_address("tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5555"
    assert connect_address("ipc:///tmp/x") == "ipc:///tmp/x"


def test_server_writes_the_address_file_after_the_bind(tmp_path):
    """``slhmc server --address-file``: written once the port is bound, removed at exit; not
    written at all when the bind fails."""
    config = write_config(tmp_path, trials=5)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    run, address_file = tmp_path / "run", tmp_path / "run" / "server.address"
    server = start_server(config, run, address, "--address-file", str(address_file))
    try:
        deadline = time.monotonic() + 120
        while not address_file.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert address_file.read_text().strip() == address
        # a second server on the same port: its bind fails, and it writes no address file
        other = tmp_path / "other.address"
        second = subprocess.run([*SLHMC, "server", str(config), "--out",
                                 str(tmp_path / "run2"), "--bind", address, "--no-progress", "--address-file",
                                 str(other)], env=env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "cannot bind" in second.stderr
        assert not other.exists()
    finally:
        server.send_signal(signal.SIGTERM)  # as Slurm at the end of a job
        server.communicate(timeout=60)
    assert not address_file.exists()
