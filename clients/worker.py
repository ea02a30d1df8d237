"""The worker side of the protocol, shared by every role (Paranoid Pirate worker).

The main thread owns the DEALER socket: it says hello, sends heartbeats, receives tasks and
sends results. The role's handler runs in one background thread, so a DFT call of minutes or a
long refit never silences the heartbeat, and handler calls stay in arrival order. When the
server is silent past the timeout the worker closes its socket and says hello on a new one.
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


class Handler(Protocol):
    role: str

    def configure(self, config: dict) -> None:
        """Called on every welcome with the server's config; drops state tied to an old server."""

    def handle(self, message: dict) -> tuple[str, dict] | None:
        """A task or data message -> (result type, fields), or None when nothing is owed."""

    # optional: ``close()``, called once when the worker exits (stop a DFT code's client, ...)


def serve(
    handler: Handler,
    connect: str,
    heartbeat_s: float = 1.0,
    timeout_s: float = 10.0,
    name: str | None = None,
    socket_setup: Callable[[zmq.Socket], None] | None = None,
    max_idle_s: float | None = None,
) -> int:
    """Serve ``handler`` to the server at ``connect`` until told to shut down.

    ``max_idle_s``: give up when no server has answered for this long (None: keep trying).
    """
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

    def open_socket() -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if socket_setup:
            socket_setup(sock)
        sock.connect(connect)
        sock.send(build("hello", role=handler.role, name=name, pid=os.getpid()))
        return sock

    sock = open_socket()
    last_recv = last_send = time.monotonic()
    last_heard = time.monotonic()  # last message from any server, across reconnects
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
                kind = msg["type"]
                if kind == "shutdown":
                    log.info("server says shut down: %s", msg["reason"])
                    return 0
                if kind == "heartbeat":
                    pass
                elif kind == "error":
                    log.warning("server error: %s", msg["error"])
                    if msg.get("code") == "unknown_worker":
                        sock.send(build("hello", role=handler.role, name=name, pid=os.getpid()))
                elif kind == "welcome":
                    heartbeat_s = msg["heartbeat_s"]
                    log.info("registered as %s", msg["worker_id"])
                    pending.append((submit(handler.configure, msg["config"]), None, kind))
                else:
                    pending.append((submit(handler.handle, msg), msg.get("task_id"), kind))
            while pending and pending[0][0].done():
                future, task_id, kind = pending.popleft()
                try:
                    reply = future.result()
                except Exception as err:  # a failed task is reported, never hidden
                    log.exception("%s failed", kind)
                    if task_id is not None:
                        sock.send(build("failed", task_id=task_id, error=f"{type(err).__name__}: {err}"[:4000]))
                        last_send = time.monotonic()
                    continue
                if reply is not None:
                    result_kind, fields = reply
                    sock.send(build(result_kind, task_id=task_id, **fields))
                    last_send = time.monotonic()
            now = time.monotonic()
            if now - last_send >= heartbeat_s:
                sock.send(build("heartbeat"))
                last_send = now
            if now - last_recv > timeout_s:
                if max_idle_s is not None and now - last_heard > max_idle_s:
                    log.error("no server at %s for %.0f s; giving up", connect, now - last_heard)
                    return 1
                log.warning("server silent for %.1f s; reconnecting", now - last_recv)
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
