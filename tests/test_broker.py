"""The broker at its boundary, fuzzed: whatever frames arrive on its real ROUTER socket, poll()
never raises, bad input is counted and answered, and a well-behaved worker is still served."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slhmc.protocol import PROTOCOL_VERSION, build, parse
from slhmc.server.broker import Broker, Completed, Joined


@pytest.fixture(scope="module")
def broker_and_peer():
    broker = Broker("tcp://127.0.0.1:*", {"note": "test"}, heartbeat_s=60.0, timeout_s=600.0)
    peer = zmq.Context.instance().socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(broker.endpoint)
    yield broker, peer
    peer.close()
    broker.close()


def drain(peer) -> list[dict]:
    out = []
    while peer.poll(50):
        out.append(parse(peer.recv()))
    return out


values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=20),
              st.binary(max_size=64)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
messages = st.dictionaries(
    st.sampled_from(["v", "type", "task_id", "role", "name", "pid", "energy", "forces", "positions", "error"]),
    values, max_size=6,
).map(lambda d: {"v": PROTOCOL_VERSION, **d} if d.get("v") is None else d)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.one_of(st.binary(max_size=200), messages.map(msgpack.packb)), min_size=1, max_size=5))
def test_fuzzed_frames_never_break_the_broker(broker_and_peer, frames):
    broker, peer = broker_and_peer
    before = broker.dropped
    for frame in frames:
        peer.send(frame)
    events = []
    for _ in range(5):
        events += broker.poll(0.01)
    for reply in drain(peer):
        assert reply["type"] in ("error", "welcome")
    # anything that was not a valid hello is counted as dropped; nothing completes a task
    assert not any(isinstance(e, Completed) for e in events)
    assert broker.dropped >= before


def test_a_real_worker_is_served_after_the_noise(broker_and_peer):
    broker, _ = broker_and_peer
    worker = zmq.Context.instance().socket(zmq.DEALER)
    worker.setsockopt(zmq.LINGER, 0)
    worker.connect(broker.endpoint)
    worker.send(build("hello", role="dft", name="honest", pid=7))
    joined = []
    for _ in range(20):
        joined += [e for e in broker.poll(0.05) if isinstance(e, Joined) and e.worker.name == "honest"]
        if joined:
            break
    assert joined
    welcome = next(m for m in drain(worker) if m["type"] == "welcome")
    assert welcome["heartbeat_s"] == broker.heartbeat_s  # the worker's liveness timeout follows it
    atoms = {"numbers": np.array([29], dtype=np.int64), "positions": np.zeros((1, 3)), "cell": np.eye(3) * 3.0,
             "pbc": np.array([True, True, True])}
    task = broker.submit("dft", "label_task", atoms)
    msgs = []
    for _ in range(20):
        broker.poll(0.02)
        msgs += drain(worker)
        if any(m["type"] == "label_task" for m in msgs):
            break
    sent = next(m for m in msgs if m["type"] == "label_task")
    worker.send(build("label_result", task_id=sent["task_id"], energy=-1.5, forces=np.zeros((1, 3)), seconds=0.01))
    done = []
    for _ in range(20):
        done += [e for e in broker.poll(0.05) if isinstance(e, Completed)]
        if done:
            break
    assert done and done[0].task is task and done[0].message["energy"] == -1.5
    worker.close()


def test_a_task_whose_workers_keep_dying_fails_instead_of_cycling():
    """Each worker that takes the task goes silent (a structure that kills the code): the task is
    re-queued MAX_LOST_WORKERS times, then reported failed, so the server stops with an error."""
    from slhmc.server.broker import MAX_LOST_WORKERS, Failed, Lost

    broker = Broker("tcp://127.0.0.1:*", {}, heartbeat_s=60.0, timeout_s=0.2)
    atoms = {"numbers": np.array([29], dtype=np.int64), "positions": np.zeros((1, 3)), "cell": np.eye(3) * 3.0,
             "pbc": np.array([True, True, True])}
    task = broker.submit("dft", "label_task", atoms)
    events: list = []
    try:
        for k in range(MAX_LOST_WORKERS + 1):
            doomed = zmq.Context.instance().socket(zmq.DEALER)
            doomed.setsockopt(zmq.LINGER, 0)
            doomed.connect(broker.endpoint)
            doomed.send(build("hello", role="dft", name=f"doomed-{k}", pid=k))
            got = []
            for _ in range(100):  # the task reaches it; then it says nothing more and is declared dead
                events += broker.poll(0.02)
                got += drain(doomed)
                if any(isinstance(e, Lost) and e.worker.name == f"doomed-{k}" for e in events):
                    break
            assert any(m["type"] == "label_task" for m in got)
            doomed.close()
        failed = [e for e in events if isinstance(e, Failed)]
        assert len(failed) == 1 and failed[0].task is task and "workers running it were lost" in failed[0].error
        assert task.lost == MAX_LOST_WORKERS + 1 and task.task_id not in broker.tasks
    finally:
        broker.close()
