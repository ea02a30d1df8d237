"""``slhmc run``: the server and every worker as separate OS processes on this machine.

Workers' output goes to DIR/logs/; the server's progress bar stays on the terminal. A worker
that dies is started again (the server has already re-queued its task). Ctrl-C stops the
server first (its checkpoint is current after every trial), then the workers.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slhmc.protocol import ROLES

from .config import Config

log = logging.getLogger(__name__)

MAX_RESTARTS = 5  # per worker slot
ORPHAN_WORKER_S = 120  # a worker started here gives up after this long without its server


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # several processes share the cores: one thread each (measured: 2 torch threads on a busy
    # 2-core machine made a step 50x slower)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(var, "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# references whose construction starts a code or imports seconds of libraries: checked by their workers
_NOT_BUILT_HERE = ("cp2k", "gpaw")


def check_reference(config: Config) -> str | None:
    """Build the reference calculator once, as each DFT worker of this machine would (and close it):
    an option its constructor refuses is one error before any process starts. None when it builds."""
    from slhmc.clients.references import make_calculator

    ref = config.reference
    if ref.calculator in _NOT_BUILT_HERE:
        return None
    try:
        calc = make_calculator(ref.calculator, dict(ref.options), config_dir=config.base_dir)
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    if hasattr(calc, "close"):
        try:
            calc.close()
        except Exception:  # closing a calculator that never ran: nothing to report
            pass
    return None


def run_all(config: Config, config_path: str, out: str, resume: bool, bind: str | None, progress: bool,
            console: bool = True) -> int:
    """Run server and workers to the end; the server's exit status (2: refused or stopped).

    ``console``: the server writes to this terminal; False sends what it prints to DIR/logs/server.out
    (its log is in DIR/server.log either way)."""
    from slhmc.server.outputs import RunDirectoryError, check_run_dir

    out_dir = Path(out)
    try:  # a run directory the server would refuse (a changed config on --resume...): refused before any process
        check_run_dir(out_dir, resume, config, report=False)
    except RunDirectoryError as err:
        log.error("%s", err)
        return 2
    problem = check_reference(config)
    if problem:  # said once, here, instead of by every DFT worker and again for every retried task
        log.error("reference (%s): %s", config_path, problem)
        return 2
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    sock_dir = None
    if bind is None:
        sock_dir = tempfile.mkdtemp(prefix="slhmc-")  # short path: ipc names are limited to ~100 bytes
        bind = f"ipc://{sock_dir}/server.sock"
    env = _env()
    py = [sys.executable, "-m", "slhmc"]
    server_cmd = [*py, "server", config_path, "--out", str(out_dir), "--bind", bind]
    if resume:
        server_cmd.append("--resume")
    if not progress:
        server_cmd.append("--no-progress")
    if console:
        server = subprocess.Popen(server_cmd, env=env)
    else:
        with open(logs / "server.out", "a") as server_out:
            server = subprocess.Popen(server_cmd, env=env, stdout=server_out, stderr=subprocess.STDOUT)
    # one worker of each role, and workers.dft of the DFT role
    slots = [(role, k) for role in ROLES for k in range(config.workers.dft if role == "dft" else 1)]
    workers: dict[tuple[str, int], subprocess.Popen] = {}
    restarts = dict.fromkeys(slots, 0)

    def start(slot: tuple[str, int]) -> None:
        role, k = slot
        log_file = open(logs / f"{role}-{k}.log", "a")
        # --max-idle: if this launcher is killed outright, its workers do not wait for ever
        cmd = [*py, "worker", role, "--connect", bind, "--config", config_path, "--name", f"{role}-{k}",
               "--max-idle", str(ORPHAN_WORKER_S)]
        workers[slot] = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        log_file.close()

    for slot in slots:
        start(slot)
    try:
        while server.poll() is None:
            time.sleep(0.2)
            for slot, proc in list(workers.items()):
                # exit 0 means the server told it to stop: the run is ending, nothing to restart
                if proc.poll() is not None and proc.returncode != 0 and server.poll() is None:
                    if restarts[slot] >= MAX_RESTARTS:
                        continue
                    restarts[slot] += 1
                    print(f"slhmc: worker {slot[0]}-{slot[1]} exited ({proc.returncode}); restarting it",
                          file=sys.stderr)
                    start(slot)
    except KeyboardInterrupt:
        print("slhmc: interrupted; stopping the server and workers", file=sys.stderr)
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    finally:
        deadline = time.monotonic() + 5
        for proc in workers.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.terminate()
        for proc in workers.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        if sock_dir:
            shutil.rmtree(sock_dir, ignore_errors=True)
    return server.returncode if server.returncode is not None else 130
