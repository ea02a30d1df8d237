"""The wire protocol between the HMC server and its workers: versioned msgpack maps over ZeroMQ."""

from .codec import MAX_MESSAGE_BYTES, ProtocolError
from .schema import PROTOCOL_VERSION, RESULT_TYPE, ROLES, SCHEMA, build, parse, structure_fields

__all__ = [
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "RESULT_TYPE",
    "ROLES",
    "SCHEMA",
    "ProtocolError",
    "build",
    "parse",
    "structure_fields",
]
