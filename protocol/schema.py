"""The message schema (``PROTOCOL_VERSION``) and its validation at the boundary.

Every message is a msgpack map ``{"v": PROTOCOL_VERSION, "type": TYPE, ...fields}``. Each TYPE has
a fixed set of fields (unknown fields are refused, so a typo never passes silently). Arrays are
declared with dtype and shape; a symbolic dimension such as ``"N"`` must agree across all
arrays of one message. :func:`parse` returns the message with arrays rebuilt as numpy arrays.

Flow (worker = DEALER, server = ROUTER):
  worker -> server: hello, heartbeat, *_result, failed, bye
  server -> worker: welcome, heartbeat, *_task, labels (to the trainer), shutdown, error
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .codec import ProtocolError, array_from_wire, pack, unpack

PROTOCOL_VERSION = 3  # 2: train_task carries its fit settings and architecture; 3: NPT (cell chains, stress)
ROLES = ("mlmd", "dft", "trainer")  # the worker roles: hello's, the CLI's and the launcher's


@dataclass(frozen=True)
class Arr:
    dtype: str
    shape: tuple  # ints, or strings naming dimensions shared within a message


@dataclass(frozen=True)
class Opt:
    spec: object


@dataclass(frozen=True)
class OneOf:
    values: tuple


@dataclass(frozen=True)
class ListOf:
    spec: object
    max_len: int = 100_000


FREE_MAP = "free-map"  # a map of plain values (str keys), e.g. config or metrics

_STRUCTURE = {
    "numbers": Arr("i8", ("N",)),
    "positions": Arr("f8", ("N", 3)),
    "cell": Arr("f8", (3, 3)),
    "pbc": Arr("b1", (3,)),
}
# stress: Voigt order (xx, yy, zz, yz, xz, xy), eV/Å³, ASE's sign (positive under tension); absent
# where the reference gave none
_STRESS = Arr("f8", (6,))
_LABEL = {**_STRUCTURE, "label_id": int, "energy": float, "forces": Arr("f8", ("N", 3)), "stress": Opt(_STRESS)}
# a train_task's settings, the fields of slhmc.potential.training.FitSettings and
# slhmc.potential.network.Architecture (units there); the server fills them from its config
_FIT = {"force_weight": float, "stress_weight": float, "validation_fraction": float, "max_steps": int, "patience": int,
        "min_improvement": float, "seed": int, "force_atoms": int, "full_force_mb": float}
_ARCHITECTURE = {"cutoff": float, "angular_cutoff": float, "hidden": ListOf(int, max_len=64), "activation": str}

_CELL_CHAIN = {
    "mode": OneOf(("isotropic", "anisotropic")),  # slhmc.hmc.npt.CELL_MODES
    "steps": Arr("f8", ("M", "D")),  # δ ln V (D = 1) or δθ (D = 6) per inner step
    "uniforms": Arr("f8", ("M",)),  # the inner Metropolis uniforms
    "temperature_K": float,
    "pressure_eV_per_A3": float,
}

SCHEMA: dict[str, dict] = {
    "hello": {"role": OneOf(ROLES), "name": str, "pid": int, "labels_held": Opt(int)},
    "welcome": {"worker_id": str, "config": FREE_MAP, "heartbeat_s": float},
    "heartbeat": {},
    "bye": {},
    "shutdown": {"reason": str},
    "error": {"error": str, "code": Opt(str)},  # code "unknown_worker": say hello again
    "failed": {"task_id": int, "error": str},
    "md_task": {
        "task_id": int,
        **_STRUCTURE,
        "masses": Arr("f8", ("N",)),
        "momenta": Arr("f8", ("N", 3)),
        "steps": int,
        "timestep_fs": float,
        "model_version": int,
        "model": Opt(bytes),
        # NPT cell trial: instead of a trajectory, M Metropolis cell steps with the ML energy
        # (slhmc.hmc.npt.inner_cell_chain); the momenta are then not used
        "cell_chain": Opt(_CELL_CHAIN),
    },
    "md_result": {
        "task_id": int,
        "positions": Arr("f8", ("N", 3)),
        "momenta": Arr("f8", ("N", 3)),
        "e_ml_start": float,
        "e_ml_end": float,
        "h_ml_drift": float,
        "model_version": int,
        "seconds": float,
        "cell": Opt(Arr("f8", (3, 3))),  # a cell trial's end cell (Å)
        "cell_steps_accepted": Opt(int),  # of its inner chain's steps
    },
    "label_task": {"task_id": int, **_STRUCTURE, "stress": Opt(bool)},  # stress: wanted, where the code has it
    "label_result": {"task_id": int, "energy": float, "forces": Arr("f8", ("N", 3)), "stress": Opt(_STRESS),
                     "seconds": float},
    "labels": {"labels": ListOf(_LABEL)},
    # ``model``: the version to warm-start from, so a fit does not depend on what a (restarted)
    # trainer happens to hold, and a resumed deterministic run refits exactly as before
    "train_task": {"task_id": int, "version": int, "label_ids": Arr("i8", ("M",)), "warm_start": bool,
                   "model": Opt(bytes), "fit": _FIT, "architecture": _ARCHITECTURE},
    "train_result": {"task_id": int, "version": int, "model": bytes, "metrics": FREE_MAP},
}

# which result answers each task (a ``failed`` answers any)
RESULT_TYPE = {"md_task": "md_result", "label_task": "label_result", "train_task": "train_result"}

_PLAIN = (str, int, float, bool, type(None))


def _free(value: object, where: str, depth: int = 0) -> None:
    if depth > 8:
        raise ProtocolError(f"{where}: nested too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ProtocolError(f"{where}: map keys must be strings")
            _free(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for k, v in enumerate(value):
            _free(v, f"{where}[{k}]", depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolError(f"{where}: not finite")
    elif not isinstance(value, _PLAIN):
        raise ProtocolError(f"{where}: {type(value).__name__} is not allowed here")


def _check(value: object, spec: object, where: str, dims: dict) -> object:
    if isinstance(spec, Opt):
        return None if value is None else _check(value, spec.spec, where, dims)
    if value is None:
        raise ProtocolError(f"{where}: missing")
    if isinstance(spec, Arr):
        shape = tuple(None if isinstance(s, str) else s for s in spec.shape)
        arr = array_from_wire(value, spec.dtype, shape, where)
        for sym, n in zip(spec.shape, arr.shape, strict=True):
            if isinstance(sym, str) and dims.setdefault(sym, n) != n:
                raise ProtocolError(f"{where}: dimension {sym}={n} disagrees with {dims[sym]}")
        return arr
    if isinstance(spec, OneOf):
        if value not in spec.values:
            raise ProtocolError(f"{where}: {value!r} is not one of {list(spec.values)}")
        return value
    if isinstance(spec, ListOf):
        if not isinstance(value, list) or len(value) > spec.max_len:
            raise ProtocolError(f"{where}: expected a list of at most {spec.max_len}")
        return [_check(v, spec.spec, f"{where}[{k}]", {}) for k, v in enumerate(value)]
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected a map")
        unknown = set(value) - set(spec)
        if unknown:
            raise ProtocolError(f"{where}: unknown fields {sorted(unknown)}")
        return {k: _check(value.get(k), s, f"{where}.{k}", dims) for k, s in spec.items()}
    if spec == FREE_MAP:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected a map")
        _free(value, where)
        return value
    if spec is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ProtocolError(f"{where}: expected a finite number")
        return float(value)
    if spec is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(f"{where}: expected an integer")
        return value
    if not isinstance(value, spec):  # str, bytes, bool
        raise ProtocolError(f"{where}: expected {spec.__name__}, got {type(value).__name__}")
    return value


def parse(frame: bytes, max_bytes: int | None = None) -> dict:
    """Decode and validate one frame; raises :class:`ProtocolError` with the reason."""
    message = unpack(frame) if max_bytes is None else unpack(frame, max_bytes)
    version = message.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r} is not supported (this side speaks {PROTOCOL_VERSION})")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in SCHEMA:
        raise ProtocolError(f"unknown message type {kind!r}")
    body = {k: v for k, v in message.items() if k not in ("v", "type")}
    checked = _check(body, SCHEMA[kind], kind, {})
    checked["type"] = kind
    return checked


def build(kind: str, **fields: object) -> bytes:
    """Encode a message of type ``kind``; the fields are checked against the schema first."""
    if kind not in SCHEMA:
        raise ProtocolError(f"unknown message type {kind!r}")
    frame = pack({"v": PROTOCOL_VERSION, "type": kind, **fields})
    parse(frame)  # the sender is held to the same schema as the receiver
    return frame


def structure_fields(atoms) -> dict:
    """numbers, positions, cell, pbc of an ase.Atoms in wire dtypes."""
    return {
        "numbers": np.asarray(atoms.numbers, dtype=np.int64),
        "positions": np.asarray(atoms.positions, dtype=np.float64),
        "cell": np.asarray(atoms.cell.array, dtype=np.float64),
        "pbc": np.asarray(atoms.pbc, dtype=bool),
    }
