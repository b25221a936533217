"""bus.envelope: what decodes, what is refused, and that nothing else ever escapes."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.envelope import MAX_FRAME_BYTES, VERSION, Envelope, pack, unpack
from bus.errors import BusError, DecodeError

pytestmark = pytest.mark.timeout(30)

# No example database: the tests must not write outside tests/ (and need no replay).
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def raw(**fields: object) -> bytes:
    """A msgpack map with exactly these fields, valid or not."""
    return msgpack.packb(fields, use_bin_type=True)


VALID = {"v": VERSION, "kind": "config", "node": "n1", "src": "control", "seq": 7,
         "ts": 1700000000.5, "body": {"a": 1}}


@pytest.mark.parametrize("body", [
    None, 0, -1, 2**63 - 1, 1.5, "text", "ünïcødé", b"\x00\xffbytes", [1, "two", None],
    {"nested": {"list": [1, 2, {"deep": True}], "bin": b"\x01"}}, {},
])
def test_round_trip_keeps_every_field(body: object) -> None:
    env = Envelope(kind="config.snapshot", body=body, node="n1", src="control", seq=42,
                   ts=1700000000.25)
    assert unpack(pack(env)) == env


def test_defaults_round_trip() -> None:
    env = Envelope(kind="k")
    back = unpack(pack(env))
    assert back == env
    assert (back.v, back.node, back.src, back.seq, back.body) == (VERSION, "", "", 0, None)


def test_unknown_keys_are_ignored() -> None:
    env = unpack(raw(**VALID, future_field={"x": [1, 2]}, another=b"\x00"))
    assert env == Envelope(kind="config", body={"a": 1}, node="n1", src="control", seq=7,
                           ts=1700000000.5)


def test_missing_optional_fields_take_defaults() -> None:
    env = unpack(raw(v=VERSION, kind="k"))
    assert (env.node, env.src, env.seq, env.ts, env.body) == ("", "", 0, 0.0, None)


def test_integer_timestamp_becomes_float() -> None:
    env = unpack(raw(**{**VALID, "ts": 1700000000}))
    assert env.ts == 1700000000.0 and isinstance(env.ts, float)


@pytest.mark.parametrize("data, message", [
    (b"", "not msgpack"),
    (b"\xc1", "not msgpack"),                      # a byte msgpack never uses
    (b"\x92\x01", "not msgpack"),                  # truncated array
    (b"\xa2\xff\xfe", "not msgpack"),              # str that is not UTF-8
    (b"\x81\x91\x00\x00", "not msgpack"),          # map keyed by an (unhashable) array
    (b"\xd4\xff\x00", "not msgpack"),              # a timestamp extension of bad length
    (pack(Envelope(kind="k")) + b"\x00", "not msgpack"),  # trailing bytes
    (b"\x91" * 100_000 + b"\x00", "not msgpack"),  # nested deeper than the unpacker's stack
    (msgpack.packb([1, 2, 3]), "not a map"),
    (msgpack.packb("config"), "not a map"),
    (msgpack.packb(None), "not a map"),
    (msgpack.packb(12), "not a map"),
], ids=["empty", "reserved-byte", "truncated", "bad-utf8", "unhashable-key", "bad-ext",
        "trailing-bytes", "too-deep", "array", "string", "nil", "int"])
def test_garbage_is_a_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        unpack(data)


@pytest.mark.parametrize("fields, message", [
    ({k: v for k, v in VALID.items() if k != "kind"}, "no 'kind'"),
    ({**VALID, "kind": ""}, "no 'kind'"),
    ({**VALID, "kind": 5}, "no 'kind'"),
    ({**VALID, "kind": b"config"}, "no 'kind'"),
    ({k: v for k, v in VALID.items() if k != "v"}, "no valid version"),
    ({**VALID, "v": 0}, "no valid version"),
    ({**VALID, "v": -1}, "no valid version"),
    ({**VALID, "v": True}, "no valid version"),
    ({**VALID, "v": "1"}, "no valid version"),
    ({**VALID, "v": 1.0}, "no valid version"),
    ({**VALID, "v": VERSION + 1}, "newer than supported"),
    ({**VALID, "v": 2**64 - 1}, "newer than supported"),
    ({**VALID, "node": 1}, "'node'/'src' must be strings"),
    ({**VALID, "src": b"control"}, "'node'/'src' must be strings"),
    ({**VALID, "node": None}, "'node'/'src' must be strings"),
    ({**VALID, "seq": 1.5}, "'seq' must be an integer"),
    ({**VALID, "seq": "7"}, "'seq' must be an integer"),
    ({**VALID, "seq": False}, "'seq' must be an integer"),
    ({**VALID, "ts": "now"}, "'ts' must be a number"),
    ({**VALID, "ts": True}, "'ts' must be a number"),
    ({**VALID, "ts": None}, "'ts' must be a number"),
])
def test_invalid_fields_are_a_decode_error(fields: dict, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        unpack(raw(**fields))


def test_newer_version_is_refused_even_if_otherwise_valid() -> None:
    env = Envelope(kind="k", v=VERSION + 1)
    with pytest.raises(DecodeError, match=f"version {VERSION + 1} is newer"):
        unpack(pack(env))


def test_oversized_frame_is_refused_before_parsing() -> None:
    # Valid msgpack (a bin of the right length) that would parse if it were allowed.
    payload = b"\xc6" + (MAX_FRAME_BYTES).to_bytes(4, "big") + bytes(MAX_FRAME_BYTES)
    assert len(payload) > MAX_FRAME_BYTES
    with pytest.raises(DecodeError, match="exceeds"):
        unpack(payload)


def test_decode_error_is_a_bus_error() -> None:
    assert issubclass(DecodeError, BusError)


# --- fuzzing: unpack must turn every input into an Envelope or a DecodeError ---------

_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_field_names = st.sampled_from(["v", "kind", "node", "src", "seq", "ts", "body", "extra"])


def _unpack_or_decode_error(data: bytes) -> Envelope | None:
    try:
        env = unpack(data)
    except DecodeError:
        return None
    # Anything accepted must honour the types the rest of the bus relies on.
    assert isinstance(env.kind, str) and env.kind
    assert isinstance(env.node, str) and isinstance(env.src, str)
    assert isinstance(env.seq, int) and not isinstance(env.seq, bool)
    assert isinstance(env.ts, float)
    assert isinstance(env.v, int) and 1 <= env.v <= VERSION
    return env


@settings(FUZZ, max_examples=1000)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _unpack_or_decode_error(data)


@FUZZ
@given(st.dictionaries(_field_names | _scalars, _values, max_size=8))
def test_fuzz_arbitrary_maps(fields: dict) -> None:
    # Maps near the envelope shape reach the field checks, not just the msgpack parser.
    _unpack_or_decode_error(msgpack.packb(fields, use_bin_type=True))


@FUZZ
@given(st.binary(min_size=1, max_size=60), st.integers(0, 80), st.binary(max_size=8))
def test_fuzz_corrupted_valid_envelopes(noise: bytes, at: int, tail: bytes) -> None:
    good = pack(Envelope(kind="config", body={"k": [1, 2.5, "x"]}, node="n", src="s", seq=3))
    at = min(at, len(good))
    _unpack_or_decode_error(good[:at] + noise + good[at + len(noise):] + tail)


@FUZZ
@given(kind=st.text(min_size=1, max_size=20), node=st.text(max_size=10),
       src=st.text(max_size=10), seq=st.integers(-(2**63), 2**63 - 1),
       ts=st.floats(allow_nan=False, allow_infinity=True), body=_values)
def test_fuzz_round_trip(kind: str, node: str, src: str, seq: int, ts: float,
                         body: object) -> None:
    env = Envelope(kind=kind, body=body, node=node, src=src, seq=seq, ts=ts)
    assert unpack(pack(env)) == env
