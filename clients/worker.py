"""The worker side of the protocol, shared by every role (Paranoid Pirate worker).

The main thread owns the DEALER socket: it says hello, sends heartbeats, receives tasks and
sends results. The role's handler runs in one background thread, so a DFT call of minutes or a
long refit never silences the heartbeat, and handler calls stay in arrival order. When the
server is silent past the timeout the worker closes its socket and says hello on a new one,
with back-off: the wait for an answer starts at 1 s and doubles up to 32 s (the Guide's
Paranoid Pirate worker), and each try says in the log which address has not answered and for how
long — a cluster user cannot see the other machine, so the log must say what to check (is the
server running; does it need ``--keys``, or does it not know this worker's key).

The silence timeout follows the server's heartbeat (``heartbeat_s`` in ``welcome``, the
server's ``workers.heartbeat``): HEARTBEATS_BEFORE_SILENCE beats, unless one was given
(``--timeout``), which is kept but never below MIN_HEARTBEATS_BEFORE_SILENCE beats: a server with
``workers.heartbeat = 10`` is not taken for dead between two beats.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import zmq

from slhmc.protocol import ProtocolError, build, parse

log = logging.getLogger(__name__)

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 32.0
HEARTBEATS_BEFORE_SILENCE = 10  # server heartbeats of silence before the worker reconnects (no --timeout)
MIN_HEARTBEATS_BEFORE_SILENCE = 3  # a given timeout is raised to this many: never between two beats


class Handler(Protocol):
    role: str

    def configure(self, config: dict) -> None:
        """Called on every welcome with the server's config; drops state tied to an old server."""

    def handle(self, message: dict) -> tuple[str, dict] | None:
        """A task or data message -> (result type, fields), or None when nothing is owed."""

    # optional: ``close()``, called once when the worker exits (stop a DFT code's client, ...)


def silence_timeout(heartbeat_s: float, timeout_s: float | None = None) -> float:
    """Seconds of server silence before reconnecting, for a server heartbeat of ``heartbeat_s`` s:
    ``timeout_s`` where given (at least MIN_HEARTBEATS_BEFORE_SILENCE beats), else
    HEARTBEATS_BEFORE_SILENCE beats."""
    if timeout_s is None:
        return HEARTBEATS_BEFORE_SILENCE * heartbeat_s
    return max(timeout_s, MIN_HEARTBEATS_BEFORE_SILENCE * heartbeat_s)


def serve(
    handler: Handler,
    connect: str,
    heartbeat_s: float = 1.0,
    timeout_s: float | None = None,
    name: str | None = None,
    socket_setup: Callable[[zmq.Socket], None] | None = None,
    max_idle_s: float | None = None,
) -> int:
    """Serve ``handler`` to the server at ``connect`` until told to shut down.

    ``max_idle_s``: give up when no server has answered for this long (None: keep trying).
    ``heartbeat_s``: s between this worker's heartbeats until the server's ``welcome`` gives its own.
    ``timeout_s``: s of server silence before reconnecting; None: from the server's heartbeat
    (see :func:`silence_timeout`).
    """
    keyed = socket_setup is not None
    name = name or f"{handler.role}@{socket.gethostname()}:{os.getpid()}"
    ctx = zmq.Context.instance()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=handler.role)
    pending: deque[tuple[Future, int | None, str]] = deque()
    # the handler thread writes a byte here when a call finishes, so the main thread's poll wakes
    # at once instead of at the next heartbeat tick (that tick cost up to 0.5 s per stage)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)

    def submit(fn: Callable, arg: object) -> Future:
        future = executor.submit(fn, arg)
        future.add_done_callback(_wake)
        return future

    def _wake(_future: Future) -> None:
        try:
            os.write(wake_w, b".")
        except OSError:  # the worker is shutting down and the pipe is closed
            pass

    def send(sock: zmq.Socket, payload: bytes, what: str = "") -> None:
        # never block: after a refused handshake (no or wrong CurveZMQ keys) the DEALER has no peer,
        # and a blocking send would hang the worker before it could say why in its log
        try:
            sock.send(payload, flags=zmq.NOBLOCK)
        except zmq.Again:
            if what:
                log.warning("could not send %s: no connection to %s (the server re-queues the task)", what, connect)

    def open_socket() -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if socket_setup:
            socket_setup(sock)
        sock.connect(connect)
        send(sock, build("hello", role=handler.role, name=name, pid=os.getpid()))
        return sock

    sock = open_socket()
    last_recv = last_send = time.monotonic()
    started = time.monotonic()
    last_heard: float | None = None  # last message from any server, across reconnects
    answered = False  # has the server answered on the current socket?
    backoff = BACKOFF_START_S
    user_timeout = timeout_s
    timeout_s = silence_timeout(heartbeat_s, user_timeout)  # until the first welcome says the server's
    log.info("%s connecting to %s", name, connect)
    try:
        while True:
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(wake_r, zmq.POLLIN)
            ready = dict(poller.poll(int(heartbeat_s * 1000 / 2)))
            if wake_r in ready:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
            if sock in ready:
                frames = sock.recv_multipart()
                try:
                    if len(frames) != 1:
                        raise ProtocolError(f"{len(frames)} frames, expected 1")
                    msg = parse(frames[0])
                except ProtocolError as err:
                    log.warning("dropped a bad message from the server: %s", err)
                    continue
                last_recv = last_heard = time.monotonic()
                answered, backoff = True, BACKOFF_START_S
                kind = msg["type"]
                if kind == "shutdown":
                    log.info("server says shut down: %s", msg["reason"])
                    return 0
                if kind == "heartbeat":
                    pass
                elif kind == "error":
                    log.warning("server error: %s", msg["error"])
                    if msg.get("code") == "unknown_worker":
                        send(sock, build("hello", role=handler.role, name=name, pid=os.getpid()))
                elif kind == "welcome":
                    heartbeat_s = msg["heartbeat_s"]
                    timeout_s = silence_timeout(heartbeat_s, user_timeout)
                    log.info("registered as %s (server heartbeat %.3g s; reconnecting after %.3g s of silence)",
                             msg["worker_id"], heartbeat_s, timeout_s)
                    pending.append((submit(handler.configure, msg["config"]), None, kind))
                else:
                    pending.append((submit(handler.handle, msg), msg.get("task_id"), kind))
            while pending and pending[0][0].done():
                future, task_id, kind = pending.popleft()
                try:
                    reply = future.result()
                    # built here: a result the protocol refuses (e.g. non-finite positions of a
                    # diverged trajectory) is the task's failure, not the worker's end
                    payload = None if reply is None else build(reply[0], task_id=task_id, **reply[1])
                except Exception as err:  # a failed task is reported, never hidden
                    if getattr(err, "logged", False):  # the reason is in this log already: no traceback per task
                        log.warning("%s %s failed: %s", kind, task_id, err)
                    else:
                        log.exception("%s failed", kind)
                    if task_id is not None:
                        send(sock, build("failed", task_id=task_id, error=f"{type(err).__name__}: {err}"[:4000]),
                             f"the failure of task {task_id}")
                        last_send = time.monotonic()
                    continue
                if payload is not None:
                    send(sock, payload, f"the result of task {task_id}")
                    last_send = time.monotonic()
            now = time.monotonic()
            if now - last_send >= heartbeat_s:
                send(sock, build("heartbeat"))
                last_send = now
            wait_s = timeout_s if answered else backoff
            if now - last_recv > wait_s:
                idle = now - (last_heard if last_heard is not None else started)
                if max_idle_s is not None and idle > max_idle_s:
                    log.error("no server at %s for %.0f s; giving up (--max-idle)", connect, idle)
                    return 1
                if last_heard is None:
                    hint = ("is it running, and are this worker's keys authorized there (--keys, --key-name)?" if keyed
                            else "is it running, and does it need --keys?")
                    log.warning("no server has answered at %s yet (%.0f s); %s Next try in %.0f s", connect, idle,
                                hint, min(backoff * 2, BACKOFF_MAX_S))
                elif answered:
                    log.warning("server at %s silent for %.1f s; reconnecting", connect, now - last_recv)
                else:
                    log.warning("server at %s still silent (%.0f s); next try in %.0f s", connect, idle,
                                min(backoff * 2, BACKOFF_MAX_S))
                if not answered:
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                answered = False
                sock.close(0)
                sock = open_socket()
                last_recv = last_send = now
    except KeyboardInterrupt:
        return 130
    finally:
        try:
            sock.send(build("bye"), flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        sock.close(0)
        executor.shutdown(wait=False, cancel_futures=True)
        if hasattr(handler, "close"):
            handler.close()
        os.close(wake_r)
        os.close(wake_w)
