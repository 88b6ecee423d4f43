"""The sync protocol's binary frames: encoding, and a strict decoder that never trusts its input. No I/O.

One frame is one websocket binary message::

    byte 0       protocol version (2: an ACK may answer several pushes)
    byte 1       frame kind (``Kind``)
    varuint      length of the header, then the header: an orjson object whose fields depend on the kind
    blobs        ``header["n"]`` times: varuint length, then that many bytes (Yjs updates, kept as bytes)

Nothing may follow the last blob. ``decode_frame`` checks the version, the kind, every header field's type
and range, and the blob count against the header, and raises ``FrameError`` (with a reason a peer can be
told) for anything else: callers turn it into a protocol error, never a crash.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..codec import Reader, varuint_bytes

__all__ = ["FEATURES", "MAX_FRAME", "MAX_ITEMS", "MAX_PUSH", "MAX_REASON", "MAX_RETURNS", "VERSION", "Frame",
           "FrameError", "Kind", "check_header", "decode_frame", "decode_parts", "encode_frame"]

VERSION = 2  # 2: ACK answers a list of pushes (``ids``) instead of one (``id``)
MAX_FRAME = 16 * 1024 * 1024
MAX_ITEMS = 10_000
MAX_PUSH = 1000  # changes per push: keeps one relay write group within its document cache
MAX_RETURNS = 1000  # discarded change ids one PULL asks back (``Pull.returns``)
_MAX_HEADER = 4 * 1024 * 1024
_MAX_INT = (1 << 63) - 1
_MAX_NAME = 200
MAX_REASON = 500


class Kind(enum.IntEnum):
    """Frame kinds. Client to relay: HELLO, PUSH, PULL. Relay to client: WELCOME, ACK, CHANGES, LIVE.
    Either way: BYE (the sender is closing, with a code and a reason)."""

    HELLO = 1
    WELCOME = 2
    PUSH = 3
    ACK = 4
    PULL = 5
    CHANGES = 6
    LIVE = 7
    BYE = 8


_KINDS = {k.value: k for k in Kind}


class FrameError(ValueError):
    """A frame that cannot be decoded or breaks the header rules; ``str()`` is the reason for the peer."""


@dataclass(frozen=True)
class Frame:
    kind: Kind
    header: dict[str, Any]
    blobs: tuple[bytes, ...] = ()


# -- header validators: each returns None when fine, or raises FrameError -----------------------------------

def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= _MAX_INT:
        raise FrameError(f"{what} must be an int in 0..2**63-1")
    return v


def _name(v: Any, what: str) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= _MAX_NAME:
        raise FrameError(f"{what} must be a str of 1 to {_MAX_NAME} characters")
    return v


def _opt_name(v: Any, what: str) -> None:
    if v is not None:
        _name(v, what)


def _bool(v: Any, what: str) -> None:
    if not isinstance(v, bool):
        raise FrameError(f"{what} must be a bool")


def _list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list) or len(v) > MAX_ITEMS:
        raise FrameError(f"{what} must be a list of at most {MAX_ITEMS} items")
    return v


def _names(v: Any, what: str) -> None:
    if v == "*":
        return
    for x in _list(v, what):
        _name(x, what)


def _opt_names(v: Any, what: str) -> None:
    if v is not None:
        _names(v, what)


def _ints(v: Any, what: str) -> None:
    for x in _list(v, what):
        if type(x) is not int or not 0 <= x <= _MAX_INT:  # the common case inline, the rest by ``_int``
            _int(x, what)


def _some_ints(v: Any, what: str) -> None:
    if not isinstance(v, list) or not v:
        raise FrameError(f"{what} must be a non-empty list")
    _ints(v, what)


def _entry(kinds: str, t: Any, what: str) -> None:
    if not isinstance(t, list) or len(t) != len(kinds):
        raise FrameError(f"{what} entries must be lists of {len(kinds)}")
    for k, x in zip(kinds, t, strict=True):
        if k == "i":
            _int(x, what)
        elif k == "n":
            _name(x, what)
        elif not isinstance(x, str) or len(x) > MAX_REASON:
            raise FrameError(f"{what}: reasons are str of at most {MAX_REASON} characters")


def _triples(kinds: str) -> Callable[[Any, str], None]:
    """A list of fixed-length tuples; ``kinds`` gives each position: i(nt), n(ame), r(eason).

    The two shapes of every PUSH, CHANGES and LIVE entry (``inn``, ``nni``) are checked inline for the
    exact types JSON gives (one entry per change: the hot path of both ends); anything else, or anything
    that fails there, goes through ``_entry``, which accepts exactly the same and says what is wrong."""

    def check(v: Any, what: str) -> None:
        for t in _list(v, what):
            _entry(kinds, t, what)

    def check_inn(v: Any, what: str) -> None:
        for t in _list(v, what):
            if type(t) is list and len(t) == 3:
                a, b, c = t
                if type(a) is int and 0 <= a <= _MAX_INT and type(b) is str and 0 < len(b) <= _MAX_NAME \
                        and type(c) is str and 0 < len(c) <= _MAX_NAME:
                    continue
            _entry(kinds, t, what)

    def check_nni(v: Any, what: str) -> None:
        for t in _list(v, what):
            if type(t) is list and len(t) == 3:
                a, b, c = t
                if type(a) is str and 0 < len(a) <= _MAX_NAME and type(b) is str and 0 < len(b) <= _MAX_NAME \
                        and type(c) is int and 0 <= c <= _MAX_INT:
                    continue
            _entry(kinds, t, what)

    return {"inn": check_inn, "nni": check_nni}.get(kinds, check)


def _reason(v: Any, what: str) -> None:
    if not isinstance(v, str) or len(v) > MAX_REASON:
        raise FrameError(f"{what} must be a str of at most {MAX_REASON} characters")


def _opt_int(v: Any, what: str) -> None:
    if v is not None:
        _int(v, what)


def _scopes(v: Any, what: str) -> None:
    if not isinstance(v, dict) or len(v) > MAX_ITEMS:
        raise FrameError(f"{what} must be an object of at most {MAX_ITEMS} entries")
    for k, x in v.items():
        _name(k, what)
        _name(x, what)


_Check = Callable[[Any, str], Any]

#: the words of HELLO's ``client`` that ask for optional fields: a relay sends a field only to a client that
#: names it, so a client that predates the field (its decoder refuses unknown fields) never receives it
FEATURES = ("scopes", "waits", "schema")

# kind -> (required header fields and their checks, which list holds one entry per blob)
_HEADERS: dict[Kind, tuple[dict[str, _Check], str | None]] = {
    Kind.HELLO: ({"device": _name, "client": _reason}, None),
    Kind.WELCOME: ({"user": _name, "relay": _name, "head": _int, "floor": _int, "read": _names,
                    "write": _names, "max_frame": _int, "last": _int}, None),
    Kind.PUSH: ({"id": _int, "changes": _triples("inn")}, "changes"),
    Kind.ACK: ({"ids": _some_ints, "ok": _ints, "rejected": _triples("irr"), "held": _ints}, None),
    Kind.PULL: ({"id": _int, "since": _int, "relay": _opt_name, "collections": _opt_names, "live": _bool,
                 "returns": _ints}, None),
    Kind.CHANGES: ({"id": _int, "items": _triples("nni"), "done": _int, "total": _int, "to": _opt_int,
                    "more": _bool, "reset": _bool}, "items"),
    Kind.LIVE: ({"items": _triples("nni")}, "items"),
    Kind.BYE: ({"code": _int, "reason": _reason}, None),
}

# kind -> fields a frame may carry or not (a peer sends them only when its peer asked for them: ``FEATURES``)
_OPTIONAL: dict[Kind, dict[str, _Check]] = {
    # collection -> fingerprint of the grant's ``where`` limit on it; a fingerprint of the relay's schema
    Kind.WELCOME: {"scopes": _scopes, "schema": _name},
    Kind.ACK: {"waits": _triples("ir")},  # [change id, why the relay holds it back] of held changes
}

# ``_HEADERS`` as the checks run them: (field, check, "KIND.field" for the error messages), made once
_CHECKS: dict[Kind, tuple[tuple[str, _Check, str], ...]] = {
    k: tuple((name, check, f"{k.name}.{name}") for name, check in fields.items())
    for k, (fields, _) in _HEADERS.items()}
_LISTED: dict[Kind, str | None] = {k: listed for k, (_, listed) in _HEADERS.items()}


def check_header(kind: Kind, header: Any) -> dict[str, Any]:
    if type(header) is not dict and not isinstance(header, dict):
        raise FrameError(f"{kind.name} header must be an object")
    checks = _CHECKS[kind]
    for name, check, what in checks:
        if name not in header:
            raise FrameError(f"{kind.name} header lacks {name!r}")
        check(header[name], what)
    if len(header) != len(checks):  # more keys than the required ones: optional ones, or unknown ones
        optional = _OPTIONAL.get(kind, {})
        unknown = sorted(set(header) - {c[0] for c in checks} - set(optional))
        if unknown:
            raise FrameError(f"{kind.name} header has unknown fields {unknown}")
        for name, check in optional.items():
            if name in header:
                check(header[name], f"{kind.name}.{name}")
    return header


def encode_frame(kind: Kind, header: dict[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    """Encode a frame. The header is checked as strictly as the decoder would (a bad one is a bug here)."""
    check_header(kind, header)
    listed = _LISTED[kind]
    if listed is not None and len(header[listed]) != len(blobs):
        raise FrameError(f"{kind.name} has {len(header[listed])} {listed} but {len(blobs)} blobs")
    if listed is None and blobs:
        raise FrameError(f"{kind.name} carries no blobs")
    raw = orjson.dumps(header)
    parts = [bytes((VERSION, kind)), varuint_bytes(len(raw)), raw]
    for b in blobs:
        parts.append(varuint_bytes(len(b)))
        parts.append(b)
    return b"".join(parts)


def decode_frame(data: bytes, *, max_size: int = MAX_FRAME) -> Frame:
    """Decode one frame, or raise ``FrameError`` saying what is wrong with it."""
    return Frame(*decode_parts(data, max_size))


def decode_parts(data: bytes, max_size: int = MAX_FRAME) -> tuple[Kind, dict[str, Any], tuple[bytes, ...]]:
    """``decode_frame`` without the ``Frame`` around the result: (kind, header, blobs). The protocol core
    takes a frame apart straight into its event, once per message received."""
    if type(data) is not bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise FrameError("frames are binary messages, not text")
        data = bytes(data)
    end = len(data)
    if end > max_size:
        raise FrameError(f"frame of {end} bytes exceeds the limit of {max_size}")
    if end < 2:
        raise FrameError("truncated frame")
    if data[0] != VERSION:
        raise FrameError(f"unsupported protocol version {data[0]} (this end speaks {VERSION})")
    kind = _KINDS.get(data[1])
    if kind is None:
        raise FrameError(f"unknown frame kind {data[1]}")
    try:
        n, pos = _read_varuint(data, 2, end)
        if n > end - pos:
            raise ValueError(f"length {n} runs past the end of the input")
        if n > _MAX_HEADER:
            raise FrameError("header too large")
        try:
            header = orjson.loads(data[pos:pos + n])
        except orjson.JSONDecodeError as e:
            raise FrameError(f"{kind.name} header is not JSON: {e}") from None
        check_header(kind, header)
        listed = _LISTED[kind]
        count = len(header[listed]) if listed is not None else 0
        blobs, pos = _read_blobs(data, pos + n, end, count)
    except FrameError:
        raise
    except ValueError as e:
        raise FrameError(f"truncated {kind.name} frame: {e}") from None
    if pos < end:
        raise FrameError(f"{end - pos} unexpected bytes after the {kind.name} frame")
    return kind, header, blobs


def _read_varuint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varuint at ``pos`` and the position after it (as ``Reader.varuint``, with one- and two-byte
    values inline: every length in a frame under 16 KiB). Raises ``ValueError`` if truncated."""
    if pos < end:
        b = data[pos]
        if b < 0x80:
            return b, pos + 1
        if pos + 1 < end:
            b2 = data[pos + 1]
            if b2 < 0x80:
                return (b & 0x7F) | (b2 << 7), pos + 2
    r = Reader(data, pos)
    n = r.varuint()
    return n, r.pos


def _read_blobs(data: bytes, pos: int, end: int, count: int) -> tuple[tuple[bytes, ...], int]:
    """``count`` length-prefixed blobs from ``pos`` (as ``Reader.bytes``, inline: a LIVE or CHANGES frame
    holds one per item); returns them and the position after the last. Raises ``ValueError`` if
    truncated."""
    out = []
    for _ in range(count):
        n, pos = _read_varuint(data, pos, end)
        if n > end - pos:
            raise ValueError(f"length {n} runs past the end of the input")
        out.append(data[pos:pos + n])
        pos += n
    return tuple(out), pos
