"""Lost workers and failed connections, injected for real (real server and worker processes, real
ZeroMQ sockets on loopback): what the user reads, and how soon."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from slhmc.rundir import read_events

from .runs import SLHMC, env, free_port, start_server, wait_for_trials, write_config


def worker(role: str, address: str, log: Path, *args: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([*SLHMC, "worker", role, "--connect", address, "--name", f"{role}-t", *args],
                                env=env(), stdout=out, stderr=subprocess.STDOUT)


def wait_text(path: Path, text: str, timeout_s: float, count: int = 1) -> float:
    """Seconds until ``text`` appears ``count`` times in ``path``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if path.exists() and path.read_text().count(text) >= count:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"{text!r} x{count} not in {path} within {timeout_s} s:\n"
                         + (path.read_text()[-2000:] if path.exists() else ""))


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_a_killed_dft_worker_is_reported_and_the_server_says_what_to_start(tmp_path):
    config = write_config(tmp_path, trials=12, timeout=2.0)  # workers.timeout 2 s, heartbeat 0.5 s
    run, address = tmp_path / "run", f"tcp://127.0.0.1:{free_port()}"
    server = start_server(config, run, address)
    procs = [worker(role, address, tmp_path / f"{role}.log") for role in ("mlmd", "trainer")]
    dft = worker("dft", address, tmp_path / "dft.log")
    log = run / "server.log"
    try:
        wait_for_trials(run, 2, 120)
        dft.send_signal(signal.SIGKILL)
        dft.wait()
        assert wait_text(log, "lost worker dft-", 8) < 8  # at workers.timeout (2 s) plus a heartbeat
        # every workers.timeout while no dft worker is there: the role and the address to connect to
        waited = wait_text(log, "waiting for a dft worker", 10, count=2)
        lines = [ln for ln in log.read_text().splitlines() if "waiting for a dft worker" in ln]
        assert waited < 10 and all(address in ln and "slhmc worker dft" in ln for ln in lines)
        procs.append(worker("dft", address, tmp_path / "dft2.log"))
        _, err = server.communicate(timeout=120)
        assert server.returncode == 0, err[-2000:]
    finally:
        stop(server, dft, *procs)


def test_a_worker_without_a_server_says_so_with_back_off(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens here
    log = tmp_path / "w.log"
    t0 = time.monotonic()
    w = worker("dft", address, log, "--max-idle", "10")
    assert w.wait(40) == 1  # gives up after --max-idle
    assert time.monotonic() - t0 < 30
    lines = [ln for ln in log.read_text().splitlines() if "no server has answered" in ln]
    # tries at 1, 3, 7 s (1 -> 2 -> 4 s, doubling up to 32): three lines in 10 s, not one per second
    assert 2 <= len(lines) <= 4, log.read_text()
    assert all(address in ln and "--keys" in ln for ln in lines)


def test_a_keyless_worker_at_a_curve_server_is_logged_on_both_sides(tmp_path):
    keys = tmp_path / "keys"
    assert subprocess.run([*SLHMC, "keys", str(keys)], env=env(), capture_output=True).returncode == 0
    config = write_config(tmp_path, trials=5)
    run, address = tmp_path / "run", f"tcp://127.0.0.1:{free_port()}"
    server = start_server(config, run, address, "--keys", str(keys))
    w = worker("dft", address, tmp_path / "w.log", "--max-idle", "4")
    try:
        assert wait_text(run / "server.log", "handshake", 20) < 20  # refused, and said so on the server
        assert w.wait(30) == 1
        assert "does it need --keys" in (tmp_path / "w.log").read_text()
    finally:
        stop(server, w)


def test_bad_addresses_and_a_port_in_use_are_one_line_errors_and_the_run_dir_stays_usable(tmp_path):
    config = write_config(tmp_path, trials=5)
    r = subprocess.run([*SLHMC, "worker", "dft", "--connect", "localhost:5555"], env=env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "tcp://localhost:5555" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([*SLHMC, "server", str(config), "--out", str(tmp_path / "x"), "--bind", "localhost:5555"],
                       env=env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "tcp://localhost:5555" in r.stderr and "authentication" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    run = tmp_path / "run"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = subprocess.run([*SLHMC, "server", str(config), "--out", str(run), "--bind", f"tcp://127.0.0.1:{port}",
                            "--no-progress"], env=env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert any("cannot bind" in ln and str(port) in ln for ln in r.stderr.splitlines())
    # the failed start left files; --resume says what to do, and a new run starts there after all
    r = subprocess.run([*SLHMC, "server", str(config), "--out", str(run), "--resume", "--no-progress",
                        "--bind", f"tcp://127.0.0.1:{free_port()}"], env=env(), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "without --resume" in r.stderr
    server = start_server(config, run, f"tcp://127.0.0.1:{free_port()}")
    try:
        wait_text(run / "server.log", "bootstrap: labelling", 30)
        assert (run / "failed-start-1" / "config.json").exists()
    finally:
        stop(server)


def test_a_server_heartbeat_of_12_s_does_not_make_workers_reconnect(tmp_path):
    config = write_config(tmp_path, trials=5, timeout=40.0)
    config.write_text(config.read_text().replace("heartbeat = 0.5", "heartbeat = 12.0"))
    run, address = tmp_path / "run", f"tcp://127.0.0.1:{free_port()}"
    server = start_server(config, run, address)
    log = tmp_path / "dft.log"
    w = worker("dft", address, log)  # no --timeout: 10 server heartbeats (120 s) before reconnecting
    try:
        wait_text(log, "registered as", 30)
        time.sleep(16)  # bootstrap labels, then only 12-s heartbeats
        joined = [e["worker"] for e in read_events(run) if e["event"] == "joined"]
        assert joined.count("dft-t") == 1  # never reconnected between two 12-s heartbeats
    finally:
        stop(server, w)


def test_config_and_reference_errors_come_once_before_any_process(tmp_path):
    config = write_config(tmp_path, trials=5, dft=2, calculator="socket",
                          options='[reference.options]\nclient = "i-pi-py_driver -a {host} -p {port} -m dummy"\n'
                                  "port = 31415")
    t0 = time.monotonic()
    r = subprocess.run([*SLHMC, "run", str(config), "--out", str(tmp_path / "a")], env=env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "31415" in r.stderr and "workers.dft" in r.stderr
    # a bad option that only the calculator's constructor sees: one error, no worker started
    config = write_config(tmp_path, trials=5, calculator="socket",
                          options='[reference.options]\nclient = "true"\ncode = "siesta"')
    r = subprocess.run([*SLHMC, "run", str(config), "--out", str(tmp_path / "b")], env=env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("code must be") == 1
    assert not (tmp_path / "b" / "logs").exists()
    # a directory holding a run is refused before any process starts
    done = tmp_path / "c"
    done.mkdir()
    (done / "checkpoint.json").write_text("{}")
    r = subprocess.run([*SLHMC, "run", str(config), "--out", str(done)], env=env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "already holds a run" in r.stderr and not (done / "logs").exists()
    assert time.monotonic() - t0 < 30
