"""Messages round-trip exactly, and whatever is malformed is refused with a reason (never a crash,
never pickle)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slhmc.protocol import PROTOCOL_VERSION, RESULT_TYPE, SCHEMA, ProtocolError, build, parse
from slhmc.protocol.codec import pack


def md_task(n: int = 4, **over) -> dict:
    rng = np.random.default_rng(0)
    fields = {
        "task_id": 7,
        "numbers": np.full(n, 29, dtype=np.int64),
        "positions": rng.normal(size=(n, 3)),
        "cell": np.eye(3) * 5.0,
        "pbc": np.array([True, True, False]),
        "masses": np.full(n, 63.5),
        "momenta": rng.normal(size=(n, 3)),
        "steps": 10,
        "timestep_fs": 1.5,
        "model_version": 2,
        "model": b"\x00weights",
    }
    fields.update(over)
    return fields


FIT = {"force_weight": 0.1, "stress_weight": 0.001, "validation_fraction": 0.1, "max_steps": 60, "patience": 3,
       "min_improvement": 0.005, "seed": 7, "force_atoms": 16, "full_force_mb": 512.0}
ARCHITECTURE = {"cutoff": 6.0, "angular_cutoff": 4.5, "hidden": [15, 15], "activation": "tanh"}


def train_task(**over) -> dict:
    fields = {"task_id": 3, "version": 1, "label_ids": np.arange(5), "warm_start": True, "model": None,
              "fit": dict(FIT), "architecture": dict(ARCHITECTURE)}
    fields.update(over)
    return fields


def raw(kind: str, **fields) -> bytes:
    """Encode without the sender-side check, as a hostile or buggy peer would."""
    return pack({"v": PROTOCOL_VERSION, "type": kind, **fields})


def test_round_trip_keeps_arrays_exactly():
    fields = md_task()
    msg = parse(build("md_task", **fields))
    assert msg["type"] == "md_task"
    for key, value in fields.items():
        if isinstance(value, np.ndarray):
            assert msg[key].dtype == value.dtype and np.array_equal(msg[key], value)
            assert msg[key].flags.writeable
        else:
            assert msg[key] == value


def test_optional_fields_and_big_endian_input():
    msg = parse(build("md_task", **md_task(model=None)))
    assert msg["model"] is None
    big = md_task()
    big["positions"] = big["positions"].astype(">f8")
    assert np.array_equal(parse(build("md_task", **big))["positions"], md_task()["positions"])


@pytest.mark.parametrize(
    "frame, reason",
    [
        (b"\xc1garbage", "undecodable"),
        (msgpack.packb([1, 2, 3]), "must be a map"),
        (pack({"v": PROTOCOL_VERSION + 1, "type": "heartbeat"}), "version"),
        (pack({"type": "heartbeat"}), "version"),
        (raw("launch_missiles"), "unknown message type"),
        (raw("heartbeat", extra=1), "unknown field"),
        (raw("hello", role="dft", name="x"), "pid"),
        (raw("hello", role="admin", name="x", pid=1), "role"),
        (raw("failed", task_id=True, error="x"), "integer"),
        (raw("md_task", **md_task(positions=np.zeros((5, 3)))), "disagrees"),
        (raw("md_task", **md_task(cell=np.eye(2))), "shape"),
        (raw("md_task", **md_task(positions=np.full((4, 3), np.nan))), "NaN"),
        (raw("md_task", **md_task(numbers=np.zeros(4))), "kind"),
        (raw("md_task", **md_task(masses={"dtype": "<c16", "shape": [4], "data": bytes(64)})), "not allowed"),
        (raw("md_task", **md_task(masses={"dtype": "|O", "shape": [4], "data": bytes(32)})), "not allowed"),
        (raw("label_result", task_id=1, energy=float("inf"), forces=np.zeros((1, 3)), seconds=0.1), "finite"),
        (raw("train_task", **{k: v for k, v in train_task().items() if k != "fit"}), "train_task.fit: missing"),
        (raw("train_task", **train_task(architecture=None)), "architecture: missing"),
        (raw("train_task", **train_task(fit={**FIT, "patiense": 3})), "unknown fields"),
        (raw("train_task", **train_task(fit={k: v for k, v in FIT.items() if k != "patience"})), "patience: missing"),
        (raw("train_task", **train_task(fit={**FIT, "max_steps": 6.5})), "max_steps: expected an integer"),
        (raw("train_task", **train_task(architecture={**ARCHITECTURE, "hidden": [15, "x"]})), "integer"),
        (msgpack.packb({"v": 1, "type": "md_result", "positions": msgpack.ExtType(1, b"x")}), "extension"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(frame, reason):
    with pytest.raises(ProtocolError, match=reason):
        parse(frame)


def test_train_task_carries_its_fit_settings_and_architecture():
    msg = parse(build("train_task", **train_task()))
    assert msg["fit"] == FIT and msg["architecture"] == ARCHITECTURE
    with pytest.raises(ProtocolError, match="fit: missing"):  # the sender is held to it too
        build("train_task", **{k: v for k, v in train_task().items() if k != "fit"})


def test_the_schema_names_each_tasks_result():
    tasks = {kind for kind in SCHEMA if kind.endswith("_task")}
    assert set(RESULT_TYPE) == tasks and all(RESULT_TYPE[t] in SCHEMA for t in tasks)


def test_forged_array_byte_count_is_refused():
    payload = raw("label_task", task_id=1, **{k: md_task()[k] for k in ("numbers", "positions", "cell", "pbc")})
    msg = msgpack.unpackb(payload)
    msg["positions"]["shape"] = [1000000, 3]  # claims far more than the bytes it carries
    with pytest.raises(ProtocolError, match="bytes do not hold"):
        parse(msgpack.packb(msg))


def test_oversized_frames_are_refused_before_decoding():
    big = raw("shutdown", reason="x" * 5000)
    with pytest.raises(ProtocolError, match="exceeds"):
        parse(big, max_bytes=1000)


def test_sender_is_held_to_the_schema():
    with pytest.raises(ProtocolError):
        build("md_task", **md_task(steps="ten"))
    with pytest.raises(ProtocolError):
        build("no_such_type")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_parser(data):
    try:
        parse(data)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["v", "type", "task_id", "energy", "forces", "seconds", "error"]),
    st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=8), st.binary(max_size=8),
              st.none(), st.lists(st.integers(-(2**31), 2**31), max_size=3)),
    max_size=7,
))
def test_random_maps_never_crash_the_parser(message):
    try:
        parse(msgpack.packb(message))
    except ProtocolError:
        pass
