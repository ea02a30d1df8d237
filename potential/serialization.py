"""Models as bytes and files without pickle: safetensors weights + JSON hyperparameters.

safetensors (Hugging Face's format) stores raw tensors and a string-to-string metadata map; it
never executes code on load, so a model file or a model that came over the network is safe to
read. The metadata holds ``hyperparameters`` (JSON) and ``info`` (JSON: version, metrics, ...).

The training feature range (``feature_min``/``feature_max``, for the extrapolation check) is two
more tensors in the same file. Models written before it existed lack them and still load: their
range is unknown and no extrapolation check is made (logged once per process).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .descriptors import DescriptorSpec
from .network import BPNN

log = logging.getLogger(__name__)

FORMAT = "slhmc-bpnn-1"
# buffers added after the format was fixed: a model without them loads with their defaults
OPTIONAL_TENSORS = ("feature_min", "feature_max")
_warned_no_range = False


def model_to_bytes(model: BPNN, info: dict | None = None) -> bytes:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "hyperparameters": json.dumps(model.hyperparameters()),
        "info": json.dumps(info or {}),
    }
    return st_save(tensors, metadata=metadata)


def _metadata(data: bytes) -> dict:
    # safetensors layout: 8-byte little-endian header length, then a JSON header
    if len(data) < 8:
        raise ValueError("not a safetensors model: too short")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("not a safetensors model: bad header length")
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"not an slhmc model (format {meta.get('format')!r}, expected {FORMAT!r})")
    return meta


def model_from_bytes(data: bytes, device: str | torch.device = "cpu") -> tuple[BPNN, dict]:
    """The model and its ``info`` dict, from bytes made by :func:`model_to_bytes`."""
    meta = _metadata(data)
    hyper = json.loads(meta["hyperparameters"])
    model = BPNN(
        DescriptorSpec.from_dict(hyper["descriptor"]),
        hidden=tuple(hyper["hidden"]),
        activation=hyper["activation"],
        dtype=getattr(torch, hyper.get("dtype", "float64")),
    )
    state = st_load(data)
    absent = [k for k in OPTIONAL_TENSORS if k not in state]
    result = model.load_state_dict(state, strict=not absent)
    missing = [k for k in result.missing_keys if k not in OPTIONAL_TENSORS]
    if missing or result.unexpected_keys:
        raise ValueError(f"model tensors do not match its hyperparameters: missing {missing}, "
                         f"unexpected {list(result.unexpected_keys)}")
    if absent:
        _note_no_range()
    return model.to(device), json.loads(meta.get("info", "{}"))


def _note_no_range() -> None:
    global _warned_no_range
    if not _warned_no_range:
        _warned_no_range = True
        log.warning("model written without a training feature range (older slhmc): range unknown, "
                    "so no extrapolation check is made with it")


def save_model(path: str | Path, model: BPNN, info: dict | None = None) -> None:
    Path(path).write_bytes(model_to_bytes(model, info))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[BPNN, dict]:
    return model_from_bytes(Path(path).read_bytes(), device)
