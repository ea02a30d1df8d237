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
