"""Pre-fetching: k DFT workers advance one chain, and with hmc.deterministic it is the same chain
— trial for trial, refits included — as with one worker."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from ase.io import read

from slhmc.server.prefetch import trials_per_round

from .runs import SLHMC, env, make_npt, read_trials, without_timings, write_config


def strip_ids(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "label_id"} for r in without_timings(records)]


def test_trials_per_round_bound():
    assert trials_per_round(1.0, 3) == 3
    assert trials_per_round(0.5, 1) == 1
    assert abs(trials_per_round(0.8, 3) - (1 + 0.8 + 0.64)) < 1e-12
    assert trials_per_round(0.2, 3) == trials_per_round(0.8, 3)  # the reject path mirrors it


@pytest.mark.parametrize("npt", [False, True], ids=["nvt", "npt"])
def test_deterministic_chain_is_identical_for_1_and_3_dft_workers(tmp_path, npt):
    """NPT: cell trials with inner chains among the position trials, and the volume step adapted in
    blocks (it changes at trial 40, from the trials of block 0), the same trial for trial. Three
    workers keep up to three proposals in flight and speculate on both outcomes; two would add a
    run, not a path."""
    runs = {}
    for k in (1, 3):
        (tmp_path / f"k{k}").mkdir()
        config = write_config(tmp_path / f"k{k}", trials=50 if npt else 40, dft=k,
                              calculator="slhmc.validation:delayed_emt",
                              options="[reference.options]\ndelay_s = 0.05", interval=10, bootstrap=4)
        if npt:
            make_npt(config, adapt_until=50)
        text = config.read_text().replace("seed = 11", "seed = 11\ndeterministic = true")
        text = text.replace("timestep = 2.0", "timestep = 6.0").replace("temperature = 300.0", "temperature = 600.0")
        config.write_text(text)
        run = tmp_path / f"k{k}" / "run"
        proc = subprocess.run([*SLHMC, "run", str(config), "--out", str(run), "--no-progress"], env=env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[k] = run
    records = {k: read_trials(run) for k, run in runs.items()}
    acceptance = np.mean([r["accepted"] for r in records[1]])
    if npt:
        cell = [r for r in records[1] if r["kind"] == "cell"]
        assert len(cell) > 10 and len({r["volume_step"] for r in cell}) > 1  # adapted, and the same in every run
        assert len({r["volume"] for r in records[1]}) > 5
    assert 0.2 < acceptance < 0.95  # rejections happen, so speculation is both right and wrong
    sources = {k: [a.info["source"] for a in read(run / "dataset.extxyz", index=":")] for k, run in runs.items()}
    assert "speculative" not in sources[1] and "speculative" in sources[3]
    for k in (3,):
        # to the last bit; label ids differ only because speculative labels are numbered in between
        assert strip_ids(records[k]) == strip_ids(records[1])
        chain_labels = [s for s in sources[k] if s != "speculative"]
        assert chain_labels == sources[1]
        metrics = [json.loads(x) for x in (runs[k] / "models" / "metrics.jsonl").read_text().splitlines()]
        reference = [json.loads(x) for x in (runs[1] / "models" / "metrics.jsonl").read_text().splitlines()]
        assert [m["train"] for m in metrics] == [m["train"] for m in reference]


def test_dft_workers_joining_late_and_leaving_early(tmp_path):
    """One DFT worker starts the run; two more join mid-run (pre-fetching then keeps three busy);
    then one leaves cleanly (SIGTERM: it says bye) and one is SIGKILLed. Nothing is lost."""
    import signal

    from .runs import (
        check_run,
        free_port,
        start_server,
        start_worker,
        start_workers,
        stop_all,
        wait_for,
        wait_for_success,
        wait_for_trials,
    )

    config = write_config(tmp_path, trials=40, calculator="slhmc.validation:delayed_emt",
                          options="[reference.options]\ndelay_s = 0.1", timeout=2.0)
    run, address = tmp_path / "run", f"tcp://127.0.0.1:{free_port()}"
    server = start_server(config, run, address)
    workers = start_workers(address, [("mlmd", "m"), ("trainer", "t"), ("dft", "dft-a")])
    try:
        wait_for_trials(run, 5)
        for name in ("dft-b", "dft-c"):
            workers[name] = start_worker("dft", name, address)
        wait_for(run / "server.log", "(dft-c, pid", 60)
        wait_for_trials(run, 20)
        workers["dft-a"].send_signal(signal.SIGTERM)
        workers["dft-c"].send_signal(signal.SIGKILL)
        wait_for_success(server, run)
        assert workers["dft-a"].wait(timeout=20) == 130  # it left on its own, after saying bye
    finally:
        stop_all(server, workers)
    check_run(run, trials=40, bootstrap=8)
