"""Faults injected for real — SIGKILLed workers and server, hung and failing reference calls,
hostile peers, unauthenticated clients — and what must hold after each: the run completes (or
stops with a clear message), every trial appears exactly once, no label is lost."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
import zmq
from ase.io import read

from slhmc.potential import load_calculator
from slhmc.protocol import PROTOCOL_VERSION, build, parse
from slhmc.protocol.codec import pack
from slhmc.rundir import read_events

from .runs import (
    SLHMC,
    check_run,
    env,
    free_port,
    make_npt,
    read_trials,
    start_server,
    start_worker,
    start_workers,
    stop_all,
    wait_for,
    wait_for_success,
    wait_for_trials,
    without_timings,
    write_config,
)


def test_killed_mlmd_and_trainer_are_replaced_and_nothing_is_lost(tmp_path):
    # NPT, which has NVT's position trials and cell trials besides: the killed mlmd worker may be in
    # either kind of md_task (an NVT run has only the first)
    # no early stopping: every fit runs its 40 steps (seconds), so the kill lands while model 2 is fitted
    config = write_config(tmp_path, trials=40, interval=10, max_steps=40, patience=40, timeout=2.0)
    make_npt(config, adapt_until=0)
    # deterministic: the chain waits for model 2, so the replacement trainer must fit it (a run that
    # does not wait would abandon a refit still running after its last trial)
    config.write_text(config.read_text().replace("seed = 11", "seed = 11\ndeterministic = true"))
    run, address = tmp_path / "run", f"tcp://127.0.0.1:{free_port()}"
    server = start_server(config, run, address)
    workers = start_workers(address, [("mlmd", "mlmd-a"), ("trainer", "trainer-a"), ("dft", "dft-a")])
    try:
        wait_for_trials(run, 5)
        workers["mlmd-a"].send_signal(signal.SIGKILL)
        workers["mlmd-b"] = start_worker("mlmd", "mlmd-b", address)
        log = run / "server.log"
        wait_for(log, "refit requested: model 2", 120)
        workers["trainer-a"].send_signal(signal.SIGKILL)  # in the middle of fitting model 2
        workers["trainer-b"] = start_worker("trainer", "trainer-b", address)
        wait_for_success(server, run)
        events = read_events(run)
        lost = {e["worker"]: e for e in events if e["event"] == "lost"}
        assert {"mlmd-a", "trainer-a"} <= set(lost)
        assert lost["trainer-a"]["requeued_kind"] == "train_task"  # killed while fitting model 2
        assert {"mlmd-b", "trainer-b"} <= {e["worker"] for e in events if e["event"] == "joined"}
    finally:
        stop_all(server, workers)
    check_run(run, trials=40, bootstrap=8)
    versions = sorted({int(p.stem.split("_")[1]) for p in (run / "models").glob("model_*.safetensors")})
    assert versions == list(range(len(versions))) and len(versions) >= 3  # model 2 was fitted after all
    metrics = [json.loads(x) for x in (run / "models" / "metrics.jsonl").read_text().splitlines()]
    assert [m["version"] for m in metrics] == versions  # each version once, none lost or doubled


@pytest.mark.parametrize("npt", [False, True], ids=["nvt", "npt"])
def test_killed_server_resumes_and_deterministic_chain_is_identical(tmp_path, npt):
    """SIGKILL the server mid-run, start it again with --resume on the same address: the workers
    reconnect by themselves, and with hmc.deterministic the chain, refits included, is the same
    trial for trial as an uninterrupted run's (NPT: the cells and the adapted volume step too)."""
    config = write_config(tmp_path, trials=30, interval=8, timeout=2.0)
    if npt:
        make_npt(config, pressure_GPa=2.0, adapt_until=30)
    config.write_text(config.read_text().replace("seed = 11", "seed = 11\ndeterministic = true"))
    reference = tmp_path / "reference"
    proc = subprocess.run([*SLHMC, "run", str(config), "--out", str(reference), "--no-progress"], env=env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run, address = tmp_path / "run", f"tcp://127.0.0.1:{free_port()}"
    server = start_server(config, run, address)
    workers = start_workers(address, [("mlmd", "m"), ("trainer", "t"), ("dft", "d")])
    try:
        wait_for_trials(run, 14)
        server.send_signal(signal.SIGKILL)
        server.wait()
        killed_at = len(read_trials(run))
        server = start_server(config, run, address, "--resume")
        assert "resumed at trial" in wait_for_success(server, run)
    finally:
        stop_all(server, workers)
    records = check_run(run, trials=30, bootstrap=8)
    assert killed_at < 30
    assert without_timings(records) == without_timings(read_trials(reference))  # to the last bit
    assert (run / "dataset.extxyz").read_bytes() == (reference / "dataset.extxyz").read_bytes()
    ours = sorted(p.name for p in (run / "models").glob("*.safetensors"))
    assert ours == sorted(p.name for p in (reference / "models").glob("*.safetensors"))
    probe = read(run / "chain.extxyz", index="-1")
    for name in ours:  # the refits after the restart produced the same networks
        e = [load_calculator(d / "models" / name, device="cpu").get_potential_energy(probe) for d in (run, reference)]
        assert e[0] == e[1]


def test_hung_reference_call_is_retried_on_another_worker(tmp_path):
    config = write_config(tmp_path, trials=6, dft=2, calculator="helpers:stalling_emt",
                          options="[reference.options]\nstall_s = 60\n", timeout=2.0)
    config.write_text(config.read_text().replace('calculator = "helpers:stalling_emt"',
                                                 'calculator = "helpers:stalling_emt"\ntimeout = 3.0'))
    run, address = tmp_path / "run", f"tcp://127.0.0.1:{free_port()}"
    server = start_server(config, run, address)
    workers = {"stuck": start_worker("dft", "dft-stuck", address, {"SLHMC_TEST_STALL": "1"})}
    try:
        wait_for(run / "server.log", "(dft-stuck, pid", 60)
        workers.update(start_workers(address, [("dft", "dft-ok"), ("mlmd", "m"), ("trainer", "t")]))
        wait_for_success(server, run)
        failed = [e for e in read_events(run) if e["event"] == "task_failed"]
        assert [(e["reason"], e["worker"], e["kind"]) for e in failed] == [("timeout", "dft-stuck", "label_task")]
    finally:
        stop_all(server, workers)
    check_run(run, trials=6, bootstrap=8)


def test_failing_reference_stops_the_run_and_is_never_a_rejection(tmp_path):
    config = write_config(tmp_path, trials=30, calculator="helpers:breaks_after",
                          options="[reference.options]\nafter = 15\n")
    run = tmp_path / "run"
    proc = subprocess.run([*SLHMC, "run", str(config), "--out", str(run), "--no-progress"], env=env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert "run stopped: label_task failed 3 times" in proc.stderr and "non-finite energy" in proc.stderr
    records = read_trials(run)
    # 9 bootstrap labels, then 6 good trials; trial 6 never happened (no rejection was recorded)
    assert [r["trial"] for r in records] == list(range(6))
    ckpt = json.loads((run / "checkpoint.json").read_text())
    assert ckpt["trial"] == 6 and ckpt["n_labels"] == 15


def test_hostile_peers_are_answered_and_the_run_completes(tmp_path):
    """Forged results for unknown task ids, a newer protocol version, NaN arrays, wrong shapes,
    random frames and raw non-ZeroMQ bytes, all while the run goes on."""
    import socket as pysocket

    import numpy as np

    config = write_config(tmp_path, trials=10)
    run, port = tmp_path / "run", free_port()
    address = f"tcp://127.0.0.1:{port}"
    server = start_server(config, run, address)
    workers = {}
    ctx = zmq.Context.instance()
    try:
        wait_for(run / "server.log", "server on", 60)
        workers.update(start_workers(address, [("mlmd", "m"), ("trainer", "t"), ("dft", "d")]))
        wait_for_trials(run, 2)
        peer = ctx.socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(address)
        peer.send(build("hello", role="dft", name="intruder", pid=1))
        assert peer.poll(5000) and parse(peer.recv())["type"] == "welcome"
        hostile = [
            build("label_result", task_id=999999, energy=-1.0, forces=np.zeros((32, 3)), seconds=0.1),
            build("md_result", task_id=1, positions=np.zeros((32, 3)), momenta=np.zeros((32, 3)), e_ml_start=0.0,
                  e_ml_end=0.0, h_ml_drift=0.0, model_version=0, seconds=0.1),
            pack({"v": PROTOCOL_VERSION + 1, "type": "hello", "role": "dft", "name": "future", "pid": 1}),
            pack({"v": PROTOCOL_VERSION, "type": "label_result", "task_id": 3, "energy": float("nan"),
                  "forces": {"dtype": "<f8", "shape": [2, 2], "data": bytes(32)}, "seconds": 0.1}),
            b"\x93\x01\x02", bytes(range(256)),
        ]
        for frame in hostile:
            peer.send(frame)
        peer.close()
        raw = pysocket.create_connection(("127.0.0.1", port))
        raw.sendall(b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f" + bytes(5000))
        raw.close()
        text = wait_for_success(server, run)
        done = [e for e in read_events(run) if e["event"] == "done"]
        assert done[-1]["dropped_messages"] >= 5  # every hostile frame above but the junk TCP bytes
        assert "dropped label_result for task 999999" in text  # and the log says which, for a person
    finally:
        stop_all(server, workers)
    check_run(run, trials=10, bootstrap=8)


def test_curve_keys_required_off_loopback_and_unkeyed_clients_refused(tmp_path):
    keys = tmp_path / "keys"
    assert subprocess.run([*SLHMC, "keys", str(keys)], env=env(), capture_output=True).returncode == 0
    config = write_config(tmp_path, trials=5)
    refused = subprocess.run([*SLHMC, "server", str(config), "--out", str(tmp_path / "x"), "--bind",
                              f"tcp://0.0.0.0:{free_port()}"], env=env(), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "without authentication" in refused.stderr

    run, address = tmp_path / "run", f"tcp://127.0.0.1:{free_port()}"
    server = start_server(config, run, address, "--keys", str(keys))
    workers = {}
    try:
        wait_for(run / "server.log", "server on", 60)
        plain = zmq.Context.instance().socket(zmq.DEALER)  # no key: the handshake never completes
        plain.setsockopt(zmq.LINGER, 0)
        plain.connect(address)
        plain.send(build("hello", role="dft", name="no-key", pid=1))
        assert not plain.poll(3000)
        plain.close()
        workers.update(start_workers(address, [("mlmd", "m"), ("trainer", "t"), ("dft", "d")],
                                     args=("--keys", str(keys))))
        assert "(no-key" not in wait_for_success(server, run)
    finally:
        stop_all(server, workers)
    check_run(run, trials=5, bootstrap=8)
