"""Order-preserving encoding of tuple keys (``("rec", "accounts", "a1", 3)``) into bytes.

Each segment is self-delimiting, so the encoding of a prefix tuple is a byte prefix of the encoding of
every key that starts with it, and byte order equals tuple order within one segment type. That lets every
backend implement ``load_range`` as one range scan.
"""

from __future__ import annotations

import struct

__all__ = ["Key", "decode_key", "encode_key", "prefix_end"]

Key = tuple[str | int, ...]

_STR = 0x02
_INT = 0x03
_OFFSET = 1 << 63
_pack_int = struct.Struct(">BQ").pack  # the tag and the offset value, in one call


#: encoded str segments, by segment: the same few names and record ids make up most keys (a merge encodes
#: five keys per record, all with its id), and encoding a segment cost more than a dict lookup. Bounded:
#: cleared when full.
_SEGMENTS: dict[str, bytes] = {}
_SEGMENTS_MAX = 4096


def _encode_str(seg: str) -> bytes:
    b = str.encode(seg, "utf-8")
    return b"\x02" + (b.replace(b"\x00", b"\x00\xff") if b"\x00" in b else b) + b"\x00\x00"


def encode_key(key: Key) -> bytes:
    parts = []
    cache = _SEGMENTS
    for seg in key:
        if type(seg) is str:  # the common case first: every key has a str segment or three
            enc = cache.get(seg)
            if enc is None:
                enc = _encode_str(seg)
                if len(cache) >= _SEGMENTS_MAX:
                    cache.clear()
                cache[seg] = enc
            parts.append(enc)
        elif type(seg) is int:  # then an int (log sequence numbers, versions, change ids): no bool here
            if not -_OFFSET <= seg < _OFFSET:
                raise ValueError(f"int key segment {seg} does not fit in 64 bits")
            parts.append(_pack_int(_INT, seg + _OFFSET))
        elif isinstance(seg, bool):
            raise TypeError("key segments are str or int, not bool")
        elif isinstance(seg, int):
            if not -_OFFSET <= seg < _OFFSET:
                raise ValueError(f"int key segment {seg} does not fit in 64 bits")
            parts.append(b"\x03" + (seg + _OFFSET).to_bytes(8, "big"))
        elif isinstance(seg, str):  # a str subclass
            parts.append(_encode_str(seg))
        else:
            raise TypeError(f"key segments are str or int, not {type(seg).__name__}")
    return b"".join(parts)


def decode_key(data: bytes) -> Key:
    out: list[str | int] = []
    i, n = 0, len(data)
    while i < n:
        tag = data[i]
        i += 1
        if tag == _INT:
            out.append(int.from_bytes(data[i:i + 8], "big") - _OFFSET)
            i += 8
        elif tag == _STR:
            buf = bytearray()
            while True:
                j = data.index(b"\x00", i)
                buf += data[i:j]
                if data[j + 1] == 0x00:
                    i = j + 2
                    break
                buf.append(0)
                i = j + 2
            out.append(buf.decode("utf-8"))
        else:
            raise ValueError(f"bad key tag {tag:#x}")
    return tuple(out)


def prefix_end(prefix: bytes) -> bytes:
    """A byte string greater than every encoded key that extends ``prefix`` (their next byte is a segment
    tag, 0x02 or 0x03), and smaller than every key that does not start with ``prefix`` but sorts after it."""
    return prefix + b"\xff"
