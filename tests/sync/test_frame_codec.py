"""The frame codec's inline length handling (one- and two-byte varuints read and written without a
``Reader``) decodes, refuses and encodes exactly what a plain ``Reader``-based codec does, for lengths of
every varuint size, non-canonical varuints, truncations and stray bytes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtsync.codec import Reader, write_bytes
from crdtsync.protocol.frames import (
    _HEADERS,
    _KINDS,
    _MAX_HEADER,
    MAX_FRAME,
    VERSION,
    Frame,
    FrameError,
    Kind,
    check_header,
    decode_frame,
    decode_parts,
    encode_frame,
)


def reference_decode(data: Any, max_size: int = MAX_FRAME) -> Frame:
    """The decoder as plainly as it can be written: every length read by ``Reader``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FrameError("frames are binary messages, not text")
    data = bytes(data)
    if len(data) > max_size:
        raise FrameError(f"frame of {len(data)} bytes exceeds the limit of {max_size}")
    if len(data) < 2:
        raise FrameError("truncated frame")
    if data[0] != VERSION:
        raise FrameError(f"unsupported protocol version {data[0]} (this end speaks {VERSION})")
    kind = _KINDS.get(data[1])
    if kind is None:
        raise FrameError(f"unknown frame kind {data[1]}")
    r = Reader(data, 2)
    try:
        raw = r.bytes()
        if len(raw) > _MAX_HEADER:
            raise FrameError("header too large")
        try:
            header = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise FrameError(f"{kind.name} header is not JSON: {e}") from None
        check_header(kind, header)
        listed = _HEADERS[kind][1]
        blobs = tuple(r.bytes() for _ in range(len(header[listed]) if listed is not None else 0))
    except FrameError:
        raise
    except ValueError as e:
        raise FrameError(f"truncated {kind.name} frame: {e}") from None
    if not r.done():
        raise FrameError(f"{len(data) - r.pos} unexpected bytes after the {kind.name} frame")
    return Frame(kind, header, blobs)


def reference_encode(kind: Kind, header: dict[str, Any], blobs: Sequence[bytes]) -> bytes:
    out = bytearray((VERSION, kind))
    write_bytes(out, orjson.dumps(header))
    for b in blobs:
        write_bytes(out, b)
    return bytes(out)


def outcome(decode: Any, data: Any) -> Frame | str:
    try:
        return decode(data)  # type: ignore[no-any-return]
    except FrameError as e:
        return f"FrameError: {e}"


# blob sizes around every varuint boundary: 1 byte below 128, 2 below 16384, 3 beyond
sizes = st.one_of(st.integers(0, 3), st.sampled_from([126, 127, 128, 129, 255, 16383, 16384, 16385, 20000]))


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(0, 3))
    blobs = [bytes(draw(sizes)) for _ in range(n)]
    if draw(st.booleans()):
        header: dict[str, Any] = {"id": draw(st.integers(0, 9)), "changes": [[i, "c", "r"] for i in range(n)]}
        kind = Kind.PUSH
    else:
        # a long name makes the header itself need a two- or three-byte length
        header = {"items": [["c" * draw(st.sampled_from([1, 120, 200])), "r", i] for i in range(n)]}
        kind = Kind.LIVE
    data = bytearray(encode_frame(kind, header, blobs))
    op = draw(st.sampled_from(["keep", "keep", "truncate", "extend", "flip", "noncanonical"]))
    if op == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif op == "extend":
        data += draw(st.binary(min_size=1, max_size=4))
    elif op == "flip":
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    elif op == "noncanonical":  # the header length padded with a continuation byte: still a valid varuint
        hlen = len(orjson.dumps(header))
        if hlen < 0x80:
            data[2:3] = bytes((hlen | 0x80, 0))
    return bytes(data)


@settings(derandomize=True, max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=frames())
def test_the_decoder_agrees_with_a_plain_reader_based_one(data: bytes) -> None:
    expected = outcome(reference_decode, data)
    assert outcome(decode_frame, data) == expected
    assert outcome(decode_frame, bytearray(data)) == expected
    if isinstance(expected, Frame):
        assert decode_parts(data) == (expected.kind, expected.header, expected.blobs)


def test_truncated_and_overlong_lengths_are_refused_with_the_same_reasons() -> None:
    push = encode_frame(Kind.PUSH, {"id": 1, "changes": [[1, "c", "r"]]}, [bytes(300)])
    cases = [
        b"\x02\x03",  # no header length at all
        b"\x02\x03\x80",  # a varuint cut after its first byte
        b"\x02\x03\x80\x80",  # ... after its second
        b"\x02\x03" + b"\xff" * 10 + b"\x01",  # longer than 64 bits
        b"\x02\x03\xff\x7f",  # a two-byte length past the end
        push[:-1],  # the blob cut short
        push[:-301] + b"\xac",  # the blob's two-byte length cut after its first byte
        push + b"\x00",
    ]
    for data in cases:
        expected = outcome(reference_decode, data)
        assert isinstance(expected, str) and expected.startswith("FrameError")
        assert outcome(decode_frame, data) == expected


@settings(derandomize=True, max_examples=100, deadline=None)
@given(blob_sizes=st.lists(sizes, max_size=3))
def test_the_encoder_writes_what_a_plain_one_does(blob_sizes: list[int]) -> None:
    blobs = [bytes([n % 251]) * n for n in blob_sizes]
    header = {"items": [["c", "r", i] for i in range(len(blobs))]}
    data = encode_frame(Kind.LIVE, header, blobs)
    assert data == reference_encode(Kind.LIVE, header, blobs)
    assert decode_frame(data) == Frame(Kind.LIVE, header, tuple(blobs))


def test_welcome_scopes_are_optional_and_checked_and_other_fields_still_unknown() -> None:
    base = {"user": "u", "relay": "r", "head": 0, "floor": 0, "read": "*", "write": "*", "max_frame": 1, "last": 0}
    assert "scopes" not in decode_frame(encode_frame(Kind.WELCOME, base)).header  # a relay before scopes
    with_scopes = {**base, "scopes": {"accounts": "0123abcd"}}
    assert decode_frame(reference_encode(Kind.WELCOME, with_scopes, [])).header == with_scopes
    for bad in ({"accounts": 1}, ["accounts"], {"": "x"}):
        with pytest.raises(FrameError, match=r"WELCOME\.scopes"):
            decode_frame(reference_encode(Kind.WELCOME, {**base, "scopes": bad}, []))
    for kind, header in ((Kind.WELCOME, {**with_scopes, "extra": 1}),
                         (Kind.BYE, {"code": 1, "reason": "", "scopes": {}})):
        with pytest.raises(FrameError, match="unknown fields"):
            decode_frame(reference_encode(kind, header, []))


def test_ack_waits_are_optional_and_checked() -> None:
    base = {"ids": [1], "ok": [], "rejected": [], "held": [7, 8]}
    assert "waits" not in decode_frame(encode_frame(Kind.ACK, base)).header  # a relay before waits
    with_waits = {**base, "waits": [[7, "builds on writes of device 'a' the relay does not have yet"]]}
    assert decode_frame(reference_encode(Kind.ACK, with_waits, [])).header == with_waits
    assert decode_frame(encode_frame(Kind.ACK, with_waits)).header == with_waits
    for bad in ([[7]], [["7", "why"]], [[7, 3]], [[7, "x" * 501]], [[-1, "why"]], {"7": "why"}, "why"):
        with pytest.raises(FrameError, match=r"ACK\.waits"):
            decode_frame(reference_encode(Kind.ACK, {**base, "waits": bad}, []))
    with pytest.raises(FrameError, match="unknown fields"):
        decode_frame(reference_encode(Kind.ACK, {**with_waits, "extra": 1}, []))


def test_welcome_schema_is_optional_and_checked() -> None:
    base = {"user": "u", "relay": "r", "head": 0, "floor": 0, "read": "*", "write": "*", "max_frame": 1, "last": 0}
    with_schema = {**base, "schema": "0123456789abcdef"}
    assert decode_frame(reference_encode(Kind.WELCOME, with_schema, [])).header == with_schema
    for bad in (1, "", None, ["x"]):
        with pytest.raises(FrameError, match=r"WELCOME\.schema"):
            decode_frame(reference_encode(Kind.WELCOME, {**base, "schema": bad}, []))
