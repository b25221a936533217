"""The msgpack envelope every bus frame carries (DESIGN §6).

A frame is ``[topic, envelope]`` for events and ``[..., envelope]`` for requests; the
envelope is a msgpack map ``{v, kind, node, src, seq, ts, body}``. Unknown keys are
ignored so that a newer sender can add fields without breaking older receivers; a
version newer than ours is refused, because its meaning may have changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .errors import DecodeError

VERSION = 1
# A bus message is configuration or stats, never user traffic: anything larger than
# this is a bug or an attack, and is refused before msgpack allocates for it.
MAX_FRAME_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Envelope:
    kind: str
    body: Any = None
    node: str = ""
    src: str = ""
    seq: int = 0
    ts: float = field(default_factory=time.time)
    v: int = VERSION


def pack(env: Envelope) -> bytes:
    """Serialise an envelope; the body must be msgpack-able plain data."""
    return msgpack.packb(
        {"v": env.v, "kind": env.kind, "node": env.node, "src": env.src,
         "seq": env.seq, "ts": env.ts, "body": env.body},
        use_bin_type=True,
    )


def unpack(data: bytes) -> Envelope:
    """Parse an envelope, raising DecodeError for anything that is not one."""
    if len(data) > MAX_FRAME_BYTES:
        raise DecodeError(f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:
        raise DecodeError(f"not msgpack: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"envelope is a {type(obj).__name__}, not a map")
    v = obj.get("v")
    kind = obj.get("kind")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise DecodeError("envelope has no valid version 'v'")
    if v > VERSION:
        raise DecodeError(f"envelope version {v} is newer than supported {VERSION}")
    if not isinstance(kind, str) or not kind:
        raise DecodeError("envelope has no 'kind'")
    node, src, seq, ts = obj.get("node", ""), obj.get("src", ""), obj.get("seq", 0), obj.get("ts", 0.0)
    if not isinstance(node, str) or not isinstance(src, str):
        raise DecodeError("envelope 'node'/'src' must be strings")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise DecodeError("envelope 'seq' must be an integer")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        raise DecodeError("envelope 'ts' must be a number")
    return Envelope(kind=kind, body=obj.get("body"), node=node, src=src, seq=seq,
                    ts=float(ts), v=v)
