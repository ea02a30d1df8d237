"""A ROUTER broker for three worker roles, after the ZeroMQ Guide's Paranoid Pirate / Majordomo.

Workers (DEALER sockets) say ``hello`` with their role; the broker answers ``welcome`` and keeps
an idle queue per role. Tasks carry ids and are queued per role; a task goes to the first idle
worker of its role. Every message from a worker refreshes its liveness; both sides send
heartbeats; a worker silent for ``timeout_s`` is declared dead and its task goes back to the
front of its queue. A result is accepted only from the worker that holds the task and only
with the expected type: anything else (unknown, finished or forged ids) is dropped, so
duplicated or late results are harmless. Bad frames are logged and answered with ``error``.

What a user on another machine needs to read in the server's log: every lost worker (silent
past ``timeout_s``, or gone when a task was sent to it), and, every ``timeout_s`` while work of
a role is queued and no worker of that role is connected, ``waiting for a dft worker (none
connected for N s; start one with: slhmc worker dft --connect ADDR)``. Refused handshakes
(a worker without the CurveZMQ keys, or with a key not in ``authorized/``) are logged too, at
most once per :data:`HANDSHAKE_REPORT_S` with a count.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from slhmc.protocol import RESULT_TYPE, ROLES, ProtocolError, build, parse

log = logging.getLogger(__name__)

# a task is re-queued when its worker dies, up to this many times: a structure that kills every
# worker that takes it must stop the run with an error, not cycle through restarted workers
MAX_LOST_WORKERS = 5
HANDSHAKE_REPORT_S = 30.0  # at most one line per this many seconds about refused handshakes


def connect_address(endpoint: str) -> str:
    """The address a worker on another machine connects to for a bound ``endpoint``: a wildcard
    host (0.0.0.0, *, [::]) replaced by this host's name."""
    import socket

    for wildcard in ("0.0.0.0", "*", "[::]"):
        endpoint = endpoint.replace(f"//{wildcard}:", f"//{socket.gethostname()}:")
    return endpoint


@dataclass
class Worker:
    identity: bytes
    role: str
    name: str
    worker_id: str
    last_seen: float
    task: Task | None = None
    # id of a task that timed out while this worker ran it: the worker is still busy with it, and
    # its late answer is dropped, after which the worker is idle again
    stale_task_id: int | None = None


Prepared = tuple[dict, list[tuple[str, dict]]]


@dataclass
class Task:
    task_id: int
    role: str
    kind: str  # message type sent, e.g. "md_task"
    fields: dict
    context: object = None  # the server's own bookkeeping for this task
    # called with the worker just before sending: returns the task's fields for this worker and the
    # messages (type, fields) to send it first; it must not call the broker
    prepare: Callable[[Worker, dict], Prepared] | None = None
    worker: bytes | None = None
    attempts: int = 0
    sent_at: float = 0.0
    timeout_s: float = 0.0  # 0: no limit on one attempt
    lost: int = 0  # workers that died (went silent) while running it


@dataclass
class Completed:
    task: Task
    message: dict


@dataclass
class Failed:
    task: Task
    error: str
    reason: str = "failed"  # failed (the worker said so), timeout, lost (its workers kept dying)
    worker: str | None = None  # name of the worker it failed on


@dataclass
class Joined:
    worker: Worker


@dataclass
class Lost:
    worker: Worker
    task: Task | None  # the task it held, now re-queued (None: it held none, or it was failed)


Event = Completed | Failed | Joined | Lost


class Broker:
    def __init__(
        self,
        bind: str,
        welcome_config: dict,
        heartbeat_s: float = 1.0,
        timeout_s: float = 10.0,
        context: zmq.Context | None = None,
        socket_setup: Callable[[zmq.Socket], None] | None = None,
    ) -> None:
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if socket_setup:
            socket_setup(self.socket)
        self.curve = getattr(socket_setup, "authenticator", None) is not None
        self.monitor: zmq.Socket | None = None
        if self.curve:  # handshake failures are invisible otherwise: the worker just hears nothing
            self.monitor = self.socket.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self.socket.bind(bind)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.welcome_config = welcome_config
        self.heartbeat_s = heartbeat_s
        self.timeout_s = timeout_s
        self.workers: dict[bytes, Worker] = {}
        self.idle: dict[str, deque[bytes]] = {r: deque() for r in ROLES}
        self.queues: dict[str, deque[Task]] = {r: deque() for r in ROLES}
        self.tasks: dict[int, Task] = {}  # submitted and not yet finished
        self._ids = itertools.count(1)
        self._worker_ids = itertools.count(1)
        self._last_heartbeat = 0.0
        self.dropped = 0  # frames or results dropped as invalid, for tests and logs
        self.refused_handshakes = 0  # CurveZMQ handshakes refused (no keys, unknown key), for tests and logs
        self._refused_unreported = 0
        self._last_refusal_report = -HANDSHAKE_REPORT_S
        self._deferred: list[Event] = []  # events found outside poll() (a send to a vanished worker)
        now = time.monotonic()
        self._absent_since = dict.fromkeys(ROLES, now)  # since when no worker of the role is connected
        self._waiting_reported = dict.fromkeys(ROLES, now)

    def connect_hint(self) -> str:
        """The address a worker passes to --connect (a wildcard bind named by this host's name)."""
        return connect_address(self.endpoint) + (" --keys DIR" if self.curve else "")

    # -- sending ---------------------------------------------------------------------------------
    def send(self, worker: Worker | bytes, kind: str, **fields: object) -> bool:
        identity = worker.identity if isinstance(worker, Worker) else worker
        try:
            self.socket.send_multipart([identity, build(kind, **fields)], flags=zmq.NOBLOCK)
            return True
        except zmq.ZMQError as err:  # peer gone (ROUTER_MANDATORY) or its queue is full
            log.debug("could not send %s to %r: %s", kind, identity, err)
            return False

    def submit(
        self,
        role: str,
        kind: str,
        fields: dict,
        context: object = None,
        prepare: Callable[[Worker, dict], Prepared] | None = None,
        timeout_s: float = 0.0,
    ) -> Task:
        task = Task(next(self._ids), role, kind, fields, context, prepare, timeout_s=timeout_s)
        self.tasks[task.task_id] = task
        self.queues[role].append(task)
        self._dispatch()
        return task

    def retry(self, task: Task) -> None:
        """Put a failed task back at the front of its queue (a different idle worker goes first)."""
        task.worker = None
        self.tasks[task.task_id] = task
        self.queues[task.role].appendleft(task)
        self._dispatch()

    def cancel_queued(self, task: Task) -> None:
        """Withdraw a task that no worker has yet; one already running is left to finish."""
        if task in self.queues[task.role]:
            self.queues[task.role].remove(task)
            self.tasks.pop(task.task_id, None)

    def broadcast(self, role: str | None, kind: str, **fields: object) -> None:
        for w in list(self.workers.values()):
            if role is None or w.role == role:
                self.send(w, kind, **fields)

    def count(self, role: str) -> int:
        return sum(1 for w in self.workers.values() if w.role == role)

    def _dispatch(self) -> None:
        for role in ROLES:
            queue, idle = self.queues[role], self.idle[role]
            while queue and idle:
                worker = self.workers[idle.popleft()]
                task = queue.popleft()
                fields, first = task.prepare(worker, dict(task.fields)) if task.prepare else (task.fields, [])
                sent = all(self.send(worker, kind, **f) for kind, f in first)
                if not (sent and self.send(worker, task.kind, task_id=task.task_id, **fields)):
                    queue.appendleft(task)
                    log.warning("worker %s (%s) is gone (a task could not be sent to it)", worker.worker_id,
                                worker.name)
                    self._remove(worker)
                    continue
                task.worker, task.sent_at = worker.identity, time.monotonic()
                task.attempts += 1
                worker.task = task

    # -- receiving -------------------------------------------------------------------------------
    def poll(self, timeout_s: float) -> list[Event]:
        """Wait up to ``timeout_s`` for traffic; handle it; return what the server must act on."""
        events, self._deferred = self._deferred, []
        if self.socket.poll(int(timeout_s * 1000)):
            for _ in range(1000):  # bounded: never starve the heartbeat check
                try:
                    frames = self.socket.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._handle(frames, events)
        self._heartbeat(events)
        self._dispatch()
        self._report()
        events.extend(self._deferred)
        self._deferred = []
        return events

    def _report(self) -> None:
        """Log what a user cannot see from here: roles without workers, refused handshakes."""
        now = time.monotonic()
        for role in ROLES:
            if self.count(role):
                self._absent_since[role] = self._waiting_reported[role] = now
                continue
            if not self.queues[role]:
                continue
            absent = now - self._absent_since[role]
            if absent >= self.timeout_s and now - self._waiting_reported[role] >= self.timeout_s:
                self._waiting_reported[role] = now
                log.warning("waiting for a%s %s worker (none connected for %.0f s; start one with: slhmc worker %s "
                            "--connect %s)", "n" if role[0] in "aeiou" else "", role, absent, role,
                            self.connect_hint())
        if self.monitor is not None:
            from zmq.utils.monitor import recv_monitor_message

            while self.monitor.poll(0):
                event = recv_monitor_message(self.monitor)
                self.refused_handshakes += 1
                self._refused_unreported += 1
                log.debug("handshake event %s on %s", event.get("event"), event.get("endpoint"))
            if self._refused_unreported and now - self._last_refusal_report >= HANDSHAKE_REPORT_S:
                log.warning("refused %d worker handshake(s) on %s since the last report (%d in all): a worker "
                            "without --keys, or whose key is not in the server's authorized/ folder",
                            self._refused_unreported, self.endpoint, self.refused_handshakes)
                self._refused_unreported = 0
                self._last_refusal_report = now

    def _handle(self, frames: list[bytes], events: list[Event]) -> None:
        if len(frames) != 2:
            self.dropped += 1
            log.warning("dropped a message of %d frames (expected 2)", len(frames))
            return
        identity, payload = frames
        try:
            msg = parse(payload)
        except ProtocolError as err:
            self.dropped += 1
            log.warning("bad message from %r: %s", identity[:8], err)
            self.send(identity, "error", error=f"bad message: {err}"[:2000])
            return
        kind = msg["type"]
        worker = self.workers.get(identity)
        if kind == "hello":
            self._hello(identity, msg, events)
            return
        if worker is None:
            self.dropped += 1
            log.info("message %s from an unregistered peer; asking it to say hello", kind)
            self.send(identity, "error", error="unknown worker: send hello first", code="unknown_worker")
            return
        worker.last_seen = time.monotonic()
        if kind == "heartbeat":
            return
        if kind == "bye":
            self._remove(worker, events)
            return
        if kind in ("failed", *RESULT_TYPE.values()):
            if worker.stale_task_id is not None and msg["task_id"] == worker.stale_task_id:
                log.info("dropped the late %s of timed-out task %d from %s", kind, msg["task_id"], worker.name)
                worker.stale_task_id = None
                self.idle[worker.role].append(identity)
                return
            task = self.tasks.get(msg["task_id"])
            if task is None or task.worker != identity or worker.task is not task:
                self.dropped += 1
                log.warning("dropped %s for task %s: not held by %s", kind, msg["task_id"], worker.name)
                return
            if kind != "failed" and kind != RESULT_TYPE[task.kind]:
                self.dropped += 1
                log.warning("dropped %s for a %s", kind, task.kind)
                return
            worker.task = None
            self.idle[worker.role].append(identity)
            self.tasks.pop(task.task_id)
            events.append(Failed(task, msg["error"], "failed", worker.name) if kind == "failed"
                          else Completed(task, msg))
            return
        self.dropped += 1
        log.warning("unexpected %s from %s", kind, worker.name)
        self.send(identity, "error", error=f"unexpected message type {kind}")

    def _hello(self, identity: bytes, msg: dict, events: list[Event]) -> None:
        old = self.workers.get(identity)
        if old is not None:  # the same socket said hello again: it lost its state
            self._remove(old, events)
        worker = Worker(
            identity, msg["role"], msg["name"], f"{msg['role']}-{next(self._worker_ids)}", time.monotonic()
        )
        self.workers[identity] = worker
        self.send(identity, "welcome", worker_id=worker.worker_id, config=self.welcome_config,
                  heartbeat_s=self.heartbeat_s)
        self.idle[worker.role].append(identity)
        log.info("worker %s (%s, pid %s) joined", worker.worker_id, worker.name, msg["pid"])
        events.append(Joined(worker))

    def _remove(self, worker: Worker, events: list[Event] | None = None) -> None:
        """Forget a worker; a Lost event reaches the server (now, or at the next poll)."""
        self.workers.pop(worker.identity, None)
        if worker.identity in self.idle[worker.role]:
            self.idle[worker.role].remove(worker.identity)
        task, requeued = worker.task, None
        out = events if events is not None else self._deferred
        if task is not None and task.task_id in self.tasks:
            task.worker = None
            task.lost += 1
            if task.lost > MAX_LOST_WORKERS:
                log.error("task %d (%s): %d workers were lost running it; not re-queued", task.task_id, task.kind,
                          task.lost)
                self.tasks.pop(task.task_id)
                out.append(Failed(task, f"{task.lost} workers running it were lost (the last: {worker.name})", "lost",
                                  worker.name))
            else:
                log.warning("re-queueing task %d (%s) of worker %s", task.task_id, task.kind, worker.worker_id)
                self.queues[task.role].appendleft(task)
                requeued = task
        worker.task = None
        out.append(Lost(worker, requeued))

    def _heartbeat(self, events: list[Event]) -> None:
        now = time.monotonic()
        for worker in list(self.workers.values()):
            task = worker.task
            if task is not None and task.timeout_s and now - task.sent_at > task.timeout_s:
                log.warning("task %d (%s) on %s ran past its %.0f-s timeout", task.task_id, task.kind,
                            worker.name, task.timeout_s)
                worker.task, worker.stale_task_id = None, task.task_id
                self.tasks.pop(task.task_id, None)
                events.append(Failed(task, f"timed out after {task.timeout_s:.0f} s on {worker.name}", "timeout",
                                     worker.name))
            if now - worker.last_seen > self.timeout_s:
                log.warning("worker %s (%s) silent for %.1f s: declared dead", worker.worker_id,
                            worker.name, now - worker.last_seen)
                self._remove(worker, events)
        if now - self._last_heartbeat >= self.heartbeat_s:
            self._last_heartbeat = now
            self.broadcast(None, "heartbeat")

    def close(self, reason: str = "run finished") -> None:
        self.broadcast(None, "shutdown", reason=reason)
        time.sleep(0.05)  # LINGER is 0: give the shutdown frames a moment to leave
        if self.monitor is not None:
            self.socket.disable_monitor()
            self.monitor.close(0)
        self.socket.close(0)
