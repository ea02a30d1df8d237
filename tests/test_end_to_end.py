"""SLHMC end to end through real processes and real ZeroMQ sockets: ``slhmc run`` all in one, the
server and workers started by hand over loopback TCP, and a DFT worker killed mid-task."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.io import read

from slhmc.potential import load_calculator
from slhmc.rundir import read_events

from .runs import (
    SLHMC,
    check_run,
    env,
    free_port,
    stop_all,
    wait_for,
    write_config,
)


def test_slhmc_run_all_in_one(tmp_path):
    config = write_config(tmp_path, trials=30)
    # the chain waits for each refit, so that model 1 is there however slow the machine (in free
    # mode a refit still running after the last trial is abandoned)
    config.write_text(config.read_text().replace("seed = 11", "seed = 11\ndeterministic = true"))
    run = tmp_path / "run"
    proc = subprocess.run([*SLHMC, "run", str(config), "--out", str(run), "--no-progress"], env=env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "restarting" not in proc.stderr
    records = check_run(run, trials=30, bootstrap=8)
    assert sum(r["accepted"] for r in records) / 30 > 0.5  # a trained network proposes well
    versions = sorted({r["model"] for r in records})
    assert versions[0] == 0 and len(list((run / "models").glob("model_*.safetensors"))) >= 2
    metrics = [json.loads(x) for x in (run / "models" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["validation"]["energy_rmse_mev_per_atom"] is not None for m in metrics)
    chain = read(run / "chain.extxyz", index=":")
    assert len(chain) == 30

    # the trained network on its own, as users take it away
    atoms = chain[-1].copy()
    atoms.calc = load_calculator(run)
    e_ml = atoms.get_potential_energy()
    atoms.calc = EMT()
    assert abs(e_ml - atoms.get_potential_energy()) / len(atoms) < 0.01  # eV/atom

    out = subprocess.run([*SLHMC, "analyze", str(run)], env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trials"] == 30 and summary["reference_calls"] == 39
    assert summary["e_pot_eV_per_atom"]["error"] > 0 and summary["effective_samples_per_reference_call"] > 0
    assert set(summary["models"]) == {str(v) for v in versions}
    assert summary["temperature_K"] == 300.0 and summary["temperature_source"] == "config.json"
    for m in summary["models"].values():
        assert 0.0 <= m["acceptance_predicted"] <= 1.0 and m["delta_e_error_rms_kT"] >= 0.0
    for name in ("acceptance.png", "energy.png", "ml_error.png", "delta_e_error.png", "rdf.png", "msd.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    g = json.loads((run / "rdf.json").read_text())["pairs"]["Cu-Cu"]
    r_peak = g["r"][int(np.argmax(g["g"]))]
    assert abs(r_peak - 3.61 / np.sqrt(2)) < 0.15  # fcc nearest-neighbour distance


def start_by_hand(config: Path, run: Path, address: str, dft_names: list[str]) -> tuple:
    server = subprocess.Popen([*SLHMC, "server", str(config), "--out", str(run), "--bind", address, "--no-progress"],
                              env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = {}
    for role, name in [("mlmd", "mlmd-a"), ("trainer", "trainer-a")] + [("dft", n) for n in dft_names]:
        workers[name] = subprocess.Popen([*SLHMC, "worker", role, "--connect", address, "--name", name],
                                         env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return server, workers


def test_server_and_workers_by_hand_over_tcp(tmp_path):
    config = write_config(tmp_path, trials=15)
    run = tmp_path / "run"
    server, workers = start_by_hand(config, run, f"tcp://127.0.0.1:{free_port()}", ["dft-a"])
    try:
        _, err = server.communicate(timeout=600)
        assert server.returncode == 0, err[-3000:]
        for proc in workers.values():  # told to exit by the server: all exit cleanly
            assert proc.wait(timeout=20) == 0
    finally:
        stop_all(server, workers)
    check_run(run, trials=15, bootstrap=8)


def test_killed_dft_worker_task_is_requeued_and_nothing_is_lost(tmp_path):
    """Two slow DFT workers label the bootstrap set; one is SIGKILLed while it holds a task. The
    server must notice by heartbeat, hand the task to the other worker, and finish every trial
    exactly once with no label lost."""
    config = write_config(tmp_path, trials=8, dft=2, calculator="slhmc.validation:delayed_emt",
                          options="[reference.options]\ndelay_s = 0.6", timeout=2.0)
    run = tmp_path / "run"
    server, workers = start_by_hand(config, run, f"tcp://127.0.0.1:{free_port()}", ["dft-a", "dft-b"])
    try:
        log = run / "server.log"
        wait_for(log, "(dft-a, pid", 60)
        wait_for(log, "(dft-b, pid", 60)
        wait_for(log, "bootstrap: labelling", 60)
        time.sleep(0.3)  # both workers are inside a 0.6-s call now
        workers["dft-a"].send_signal(signal.SIGKILL)
        _, err = server.communicate(timeout=600)
        assert server.returncode == 0, err[-3000:]
        lost = [e for e in read_events(run) if e["event"] == "lost"]
        assert [e["worker"] for e in lost] == ["dft-a"] and lost[0]["requeued_kind"] == "label_task"
    finally:
        stop_all(server, workers)
    check_run(run, trials=8, bootstrap=8)


def test_bad_config_is_refused_before_anything_starts(tmp_path):
    config = write_config(tmp_path, calculator="no_such_module:factory")
    proc = subprocess.run([*SLHMC, "run", str(config), "--out", str(tmp_path / "run")], env=env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no_such_module" in proc.stderr
    assert not (tmp_path / "run" / "trials.jsonl").exists()


def test_garbage_on_the_server_socket_is_answered_not_fatal(tmp_path):
    """A port scanner or a confused client sends junk: the server logs it and keeps going."""
    import zmq

    config = write_config(tmp_path, trials=5)
    run = tmp_path / "run"
    address = f"tcp://127.0.0.1:{free_port()}"
    server = subprocess.Popen([*SLHMC, "server", str(config), "--out", str(run), "--bind", address, "--no-progress"],
                              env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = {}
    try:
        wait_for(run / "server.log", "server on", 60)
        ctx = zmq.Context.instance()
        junk = ctx.socket(zmq.DEALER)
        junk.setsockopt(zmq.LINGER, 0)
        junk.connect(address)
        for frame in [b"\x00\x01garbage", b"GET / HTTP/1.0\r\n\r\n", np.arange(10).tobytes()]:
            junk.send(frame)
        assert junk.poll(5000), "the server did not answer"
        from slhmc.protocol import parse

        assert parse(junk.recv())["type"] == "error"
        junk.close()
        raw_tcp = socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])))
        raw_tcp.sendall(b"\xff" * 64 + b"not zmq at all")
        raw_tcp.close()
        for role, name in [("mlmd", "m"), ("trainer", "t"), ("dft", "d")]:
            workers[name] = subprocess.Popen([*SLHMC, "worker", role, "--connect", address, "--name", name],
                                             env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, err = server.communicate(timeout=600)
        assert server.returncode == 0, err[-3000:]
    finally:
        stop_all(server, workers)
    check_run(run, trials=5, bootstrap=8)


def test_analyze_delta_e_columns_by_hand(tmp_path):
    """ΔE error per model (meV/atom and kT of the cell) and the acceptance it predicts, against a
    computation by hand on four trials of a 2-atom cell at 500 K."""
    from ase import units

    from slhmc.analysis import analyze

    # trial: model, accepted, e_ref_old, e_ref, e_ml_start, e_ml, k_old, k_new (eV)
    rows = [(0, True, -1.00, -0.98, -1.10, -1.07, 0.05, 0.04),  # ΔE_ref 0.02, ΔE_ML 0.03: err +0.01
            (0, False, -0.98, -0.90, -1.00, -0.95, 0.06, 0.02),  # 0.08, 0.05: err -0.03
            (1, True, -0.98, -1.01, -0.97, -1.00, 0.03, 0.05),  # -0.03, -0.03: err 0
            (1, True, -1.01, -0.99, -1.02, -0.96, 0.05, 0.02)]  # 0.02, 0.06: err +0.04
    records = []
    for t, (model, acc, e_old, e_new, ml_start, ml_end, k_old, k_new) in enumerate(rows):
        records.append({"trial": t, "accepted": acc, "delta_h": k_new + e_new - k_old - e_old, "e_ref": e_new,
                        "e_ml": ml_end, "e_chain": e_new if acc else e_old, "model": model, "e_ref_old": e_old,
                        "e_ml_start": ml_start, "h_ml_drift": k_new + ml_end - k_old - ml_start, "k_old": k_old,
                        "k_new": k_new, "n_atoms": 2, "label_id": t, "mlmd_seconds": 0.1, "dft_seconds": 0.1,
                        "wall_seconds": t})
    (tmp_path / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "config.json").write_text(json.dumps({"config": {"system": {"temperature": 500.0}}}))
    assert analyze(tmp_path, plots=False) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    kT = units.kB * 500.0
    by_hand = {"0": {"err": [0.01, -0.03], "dh": [0.01, 0.04]}, "1": {"err": [0.0, 0.04], "dh": [-0.01, -0.01]}}
    for version, h in by_hand.items():
        m, err, dh = summary["models"][version], np.array(h["err"]), np.array(h["dh"])
        assert m["delta_e_error_rms_mev_per_atom"] == pytest.approx(1e3 * np.sqrt(np.mean((err / 2) ** 2)))
        assert m["delta_e_error_mean_mev_per_atom"] == pytest.approx(1e3 * np.mean(err / 2))
        assert m["delta_e_error_rms_kT"] == pytest.approx(np.sqrt(np.mean(err**2)) / kT)
        # ΔH_ref = ΔH_ML - err: with H_ML conserved, a trial is accepted with min(1, exp(err/kT))
        assert m["acceptance_predicted"] == pytest.approx(np.mean([min(1.0, np.exp(e / kT)) for e in err]))
        assert m["acceptance_expected"] == pytest.approx(np.mean([min(1.0, np.exp(-d / kT)) for d in dh]))
    # sign: where the network over-estimates each rise of E_ref (err >= 0), the reference test accepts all
    assert summary["models"]["1"]["acceptance_predicted"] == 1.0 and summary["models"]["0"]["acceptance"] == 0.5
    assert summary["delta_e"]["delta_e_error_rms_kT"] == pytest.approx(np.sqrt(np.mean(np.square([.01, -.03, 0, .04])))
                                                                       / kT)

    (tmp_path / "config.json").unlink()  # a run from before config.json: T from equipartition of the momenta
    assert analyze(tmp_path, plots=False) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["temperature_K"] == pytest.approx(2 * np.mean([r[6] / 2 for r in rows]) / (3 * units.kB))
    assert summary["temperature_source"].startswith("estimated")
