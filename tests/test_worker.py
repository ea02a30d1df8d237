"""A worker's liveness timeout follows the server's heartbeat from ``welcome``: a fake server
(a ROUTER socket of this test) welcomes a real ``serve`` loop and then falls silent."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from slhmc.clients.worker import (
    HEARTBEATS_BEFORE_SILENCE,
    MIN_HEARTBEATS_BEFORE_SILENCE,
    serve,
    silence_timeout,
)
from slhmc.protocol import build, parse


class Idle:
    role = "dft"

    def configure(self, config: dict) -> None:
        pass

    def handle(self, message: dict) -> None:
        return None


def test_silence_timeout_is_heartbeats_unless_given():
    assert silence_timeout(0.5) == HEARTBEATS_BEFORE_SILENCE * 0.5
    assert silence_timeout(12.0) == HEARTBEATS_BEFORE_SILENCE * 12.0
    assert silence_timeout(0.5, 4.0) == 4.0  # given: kept
    assert silence_timeout(12.0, 10.0) == MIN_HEARTBEATS_BEFORE_SILENCE * 12.0  # never between two beats


def hellos_after_silence(heartbeat_s: float, timeout_s: float | None, wait_s: float) -> list[float]:
    """Welcome one worker with ``heartbeat_s``, stay silent, and return when (s after the welcome)
    it said hello again on a new socket, within ``wait_s``."""
    server = zmq.Context.instance().socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(
        serve(Idle(), f"tcp://127.0.0.1:{port}", timeout_s=timeout_s, name="w")), daemon=True)
    thread.start()
    hellos: list[float] = []
    try:
        assert server.poll(10_000), "the worker never said hello"
        identity, frame = server.recv_multipart()
        assert parse(frame)["type"] == "hello"
        server.send_multipart([identity, build("welcome", worker_id="w-1", config={}, heartbeat_s=heartbeat_s)])
        welcomed = time.monotonic()
        while time.monotonic() - welcomed < wait_s:
            if server.poll(50):
                identity, frame = server.recv_multipart()
                if parse(frame)["type"] == "hello":
                    hellos.append(time.monotonic() - welcomed)
                    break  # heartbeats are ignored: this server is "silent"
        server.send_multipart([identity, build("shutdown", reason="test over")])
        thread.join(10)
        assert result == [0]
    finally:
        server.close(0)
    return hellos


@pytest.mark.parametrize("timeout_s", [None, 100.0])
def test_the_worker_reconnects_after_the_silence_the_welcome_heartbeat_sets(timeout_s):
    heartbeat_s = 0.15  # the server's, from welcome; this worker itself starts at 1 s
    hellos = hellos_after_silence(heartbeat_s, timeout_s, wait_s=8.0 if timeout_s is None else 3.0)
    if timeout_s is None:  # 10 heartbeats: 1.5 s
        assert hellos and 0.9 * HEARTBEATS_BEFORE_SILENCE * heartbeat_s <= hellos[0] < 8.0
    else:  # a --timeout given is kept
        assert not hellos


class Diverging:
    """An mlmd handler whose trajectory blew up (non-finite positions), then a sane one."""

    role = "mlmd"

    def __init__(self) -> None:
        self.calls = 0

    def configure(self, config: dict) -> None:
        pass

    def handle(self, message: dict) -> tuple[str, dict]:
        import numpy as np

        self.calls += 1
        value = np.nan if self.calls == 1 else 0.0
        fields = {"positions": np.full((1, 3), value), "momenta": np.zeros((1, 3)), "e_ml_start": 0.0,
                  "e_ml_end": 0.0, "h_ml_drift": 0.0, "model_version": 0, "seconds": 0.0}
        return "md_result", fields


def test_a_result_the_protocol_refuses_is_reported_failed_and_the_worker_goes_on():
    """A diverged trajectory (NaN positions) cannot be sent as a result: the worker answers
    ``failed`` for that task, with the reason, and serves the next one (it used to die)."""
    import numpy as np

    server = zmq.Context.instance().socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(
        serve(Diverging(), f"tcp://127.0.0.1:{port}", name="w")), daemon=True)
    thread.start()
    task = {"numbers": np.array([29], dtype=np.int64), "positions": np.zeros((1, 3)), "cell": np.eye(3) * 3.0,
            "pbc": np.array([True, True, True]), "masses": np.array([63.5]), "momenta": np.zeros((1, 3)),
            "steps": 1, "timestep_fs": 1.0, "model_version": 0}
    try:
        assert server.poll(10_000)
        identity, frame = server.recv_multipart()
        server.send_multipart([identity, build("welcome", worker_id="w-1", config={}, heartbeat_s=1.0)])
        answers = []
        for task_id in (1, 2):
            server.send_multipart([identity, build("md_task", task_id=task_id, **task)])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(answers) < task_id:
                if server.poll(100):
                    msg = parse(server.recv_multipart()[1])
                    if msg["type"] != "heartbeat":
                        answers.append(msg)
        assert [(m["type"], m["task_id"]) for m in answers] == [("failed", 1), ("md_result", 2)]
        assert "md_result.positions: contains NaN" in answers[0]["error"]
        server.send_multipart([identity, build("shutdown", reason="test over")])
        thread.join(10)
        assert result == [0]
    finally:
        server.close(0)


def test_a_trainer_told_to_exit_stops_its_fit_at_the_next_step():
    """A fit in progress when the worker exits (server shutdown, interrupt) is abandoned at its next
    L-BFGS step: the process must not outlive its server by the rest of a fit (hours on a cluster)."""
    from slhmc.clients.trainer import FitStopped, TrainerHandler
    from slhmc.config import PotentialConfig, TrainingConfig, trainer_settings

    from .runs import emt_labels

    trainer = TrainerHandler(device="cpu")
    for label in emt_labels(12, seed=1):
        trainer.labels[label.label_id] = label
    settings, architecture = trainer_settings(PotentialConfig(hidden=[8, 8]), TrainingConfig(max_steps=100000,
                                              patience=100000), seed=1)
    outcome: list = []

    def train() -> None:
        try:
            trainer.train(0, list(trainer.labels), False, settings, architecture)
            outcome.append("finished")
        except FitStopped as err:
            outcome.append(err)

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    time.sleep(2.0)  # well into the fit (100000 steps would take hours)
    assert thread.is_alive()
    stopped_at = time.monotonic()
    trainer.close()
    thread.join(30)
    assert not thread.is_alive() and isinstance(outcome[0], FitStopped)
    assert time.monotonic() - stopped_at < 30
