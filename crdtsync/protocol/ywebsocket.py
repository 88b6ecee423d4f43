"""The y-websocket wire format, sans I/O: lib0 varints, the message kinds, and their parsing.

This is the protocol spoken by Yjs's ``WebsocketProvider`` (the ``y-websocket`` npm package) and its
reference server. Every websocket message is one binary frame::

    message    := varuint(kind) body
    kind 0     sync:      varuint(step) varbytes(payload)   step 0: state vector, 1: step-2 update, 2: update
    kind 1     awareness: varbytes(varuint(n) n * (varuint(client) varuint(clock) varstring(json)))
    kind 2     auth:      varuint(0) varstring(reason)      server to client only: permission denied
    kind 3     query awareness (no body)

Integers are lib0 varuints (7 bits a byte, little end first); JavaScript reads at most 53 bits, so larger
values are refused here too. Strings are a varuint *byte* length then UTF-8 (pycrdt's ``Encoder`` writes
the character count, which breaks on non-ASCII text: do not use it). The parser is strict: a message
that is truncated, has trailing bytes, carries an unknown kind or step, or an awareness state that is
not JSON raises ``RemoteProtocolError``; the room layer (``crdtsync.protocol.yroom``) turns that into a
close with a reason, so no peer garbage ever escapes as another exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from ..errors import RemoteProtocolError

__all__ = [
    "MAX_AWARENESS_ENTRIES",
    "MAX_SAFE_INT",
    "MAX_STATE_VECTOR_ENTRIES",
    "MESSAGE_AUTH",
    "MESSAGE_AWARENESS",
    "MESSAGE_QUERY_AWARENESS",
    "MESSAGE_SYNC",
    "SYNC_STEP1",
    "SYNC_STEP2",
    "SYNC_UPDATE",
    "AwarenessEntry",
    "AwarenessMessage",
    "QueryAwareness",
    "Reader",
    "SyncMessage",
    "YMessage",
    "awareness_message",
    "decode_awareness",
    "decode_state_vector",
    "encode_awareness",
    "parse_message",
    "permission_denied_message",
    "query_awareness_message",
    "state_vector_entries",
    "sync_message",
    "var_bytes",
    "var_string",
    "var_uint",
]

MESSAGE_SYNC = 0
MESSAGE_AWARENESS = 1
MESSAGE_AUTH = 2
MESSAGE_QUERY_AWARENESS = 3

SYNC_STEP1 = 0
SYNC_STEP2 = 1
SYNC_UPDATE = 2

MAX_SAFE_INT = 2**53 - 1

# A state vector has an entry per Yjs client id that wrote to the document (Yjs draws one a session). A
# peer's may name clients the room lacks (its own offline sessions, edits that came by another path), but
# not this many more: past them a sync step 1 is refused (``YRoom.diff``), so what checking and answering
# it costs is bounded by the room's own size.
MAX_STATE_VECTOR_ENTRIES = 100_000
# Entries in one awareness message. A y-websocket client sends its own state, and echoes the states that
# changed at once for it: on joining, every state in the room. Decoding costs about 5 us an entry.
MAX_AWARENESS_ENTRIES = 10_000
_STEP_NAMES = {SYNC_STEP1: "sync step 1", SYNC_STEP2: "sync step 2", SYNC_UPDATE: "update"}


def var_uint(n: int) -> bytes:
    """``n`` as a lib0 varuint."""
    if not 0 <= n <= MAX_SAFE_INT:
        raise ValueError(f"{n} is not a varuint JavaScript can read (0 .. 2**53-1)")
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def var_bytes(data: bytes) -> bytes:
    """``data`` prefixed with its length, as lib0's ``writeVarUint8Array``."""
    return var_uint(len(data)) + data


def var_string(text: str) -> bytes:
    """``text`` as lib0's ``writeVarString``: the UTF-8 *byte* length, then the bytes."""
    return var_bytes(text.encode("utf-8"))


class Reader:
    """Reads lib0 values from ``data``; every short or bad read raises ``RemoteProtocolError``."""

    def __init__(self, data: bytes, what: str = "message") -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def var_uint(self) -> int:
        n = 0
        shift = 0
        while True:
            if self.pos >= len(self.data):
                raise RemoteProtocolError(f"{self.what} is truncated (in a varuint)")
            b = self.data[self.pos]
            self.pos += 1
            n |= (b & 0x7F) << shift
            if n > MAX_SAFE_INT:
                raise RemoteProtocolError(f"{self.what} holds an integer beyond 2**53-1")
            if b < 0x80:
                return n
            shift += 7

    def var_bytes(self) -> bytes:
        n = self.var_uint()
        if n > len(self.data) - self.pos:
            raise RemoteProtocolError(f"{self.what} is truncated: a field says {n} bytes, "
                                      f"{len(self.data) - self.pos} remain")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def var_string(self) -> str:
        raw = self.var_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"{self.what} holds a string that is not UTF-8") from None

    def at_end(self) -> bool:
        return self.pos == len(self.data)

    def finish(self) -> None:
        if not self.at_end():
            raise RemoteProtocolError(f"{self.what} has {len(self.data) - self.pos} trailing bytes")


@dataclass(frozen=True)
class SyncMessage:
    """Sync step 1 (``payload`` is a state vector), step 2 or update (``payload`` is a Yjs v1 update)."""

    step: int
    payload: bytes

    @property
    def name(self) -> str:
        return _STEP_NAMES[self.step]


@dataclass(frozen=True)
class AwarenessEntry:
    """One client's awareness state; ``state`` is its JSON text, ``"null"`` when the client left."""

    client: int
    clock: int
    state: str

    @property
    def removed(self) -> bool:
        return self.state == "null"


@dataclass(frozen=True)
class AwarenessMessage:
    entries: tuple[AwarenessEntry, ...]


@dataclass(frozen=True)
class QueryAwareness:
    """The peer asks for every awareness state the server knows."""


YMessage = SyncMessage | AwarenessMessage | QueryAwareness


def parse_message(data: bytes) -> YMessage:
    """Parse one y-websocket message from a client; raises ``RemoteProtocolError`` on anything else."""
    r = Reader(data)
    if not data:
        raise RemoteProtocolError("empty message")
    kind = r.var_uint()
    if kind == MESSAGE_SYNC:
        step = r.var_uint()
        if step not in _STEP_NAMES:
            raise RemoteProtocolError(f"unknown sync step {step}")
        payload = r.var_bytes()
        r.finish()
        return SyncMessage(step, payload)
    if kind == MESSAGE_AWARENESS:
        payload = r.var_bytes()
        r.finish()
        return AwarenessMessage(decode_awareness(payload))
    if kind == MESSAGE_QUERY_AWARENESS:
        r.finish()
        return QueryAwareness()
    if kind == MESSAGE_AUTH:
        raise RemoteProtocolError("auth messages go from server to client only")
    raise RemoteProtocolError(f"unknown message kind {kind}")


def decode_awareness(payload: bytes) -> tuple[AwarenessEntry, ...]:
    """The entries of an awareness update; each state must be JSON (other Yjs clients ``JSON.parse`` it).
    More than ``MAX_AWARENESS_ENTRIES`` are refused before any is read."""
    r = Reader(payload, "awareness update")
    n = r.var_uint()
    if n > len(payload):
        raise RemoteProtocolError(f"awareness update claims {n} entries in {len(payload)} bytes")
    if n > MAX_AWARENESS_ENTRIES:
        raise RemoteProtocolError(f"awareness update of {n} entries (at most {MAX_AWARENESS_ENTRIES})")
    entries = []
    for _ in range(n):
        client = r.var_uint()
        clock = r.var_uint()
        state = r.var_string()
        try:
            orjson.loads(state)
        except orjson.JSONDecodeError:
            raise RemoteProtocolError(f"awareness state of client {client} is not JSON") from None
        entries.append(AwarenessEntry(client, clock, state))
    r.finish()
    return tuple(entries)


# a varuint beyond 2**53-1: its eighth byte (or any later one, found from a later start) carries bits 53
# and up, or a byte after its eighth carries any bit (lib0 reads padding like 0x80 0x80 ... 0x00 as 0)
_TOO_BIG = re.compile(rb"[\x80-\xff]{7}[\x10-\x7f\x90-\xff]|[\x80-\xff]{8}\x80*[\x01-\x7f\x81-\xff]")
_MARKS = bytes(0 if b < 0x80 else 1 for b in range(256))
_SEVEN = b"\x01" * 7


def state_vector_entries(sv: bytes, at_most: int = MAX_STATE_VECTOR_ENTRIES) -> int:
    """Check a Yjs v1 state vector as ``decode_state_vector`` does, without decoding it: its entry count.

    Decoding a peer's state vector in Python cost 1.2-1.6 s for a million entries (one read-only client's
    sync step 1 held up every room and device for that long, message after message). This reads the count,
    refuses more than ``at_most`` entries, and then works on the bytes in C: every varuint ends with a byte
    under 0x80, so their number is the number of such bytes.
    """
    r = Reader(sv, "state vector")
    n = r.var_uint()
    if n > len(sv):
        raise RemoteProtocolError(f"state vector claims {n} entries in {len(sv)} bytes")
    if n > at_most:
        raise RemoteProtocolError(f"state vector of {n} entries (at most {at_most} here)")
    if sv[-1] >= 0x80:
        raise RemoteProtocolError("state vector is truncated (in a varuint)")
    marks = sv.translate(_MARKS)  # 1 for a byte a varuint goes on after, 0 for its last
    # (a regular expression over all of a large vector costs 30 ns a byte: look for it only where a varuint
    # is long enough, which Yjs's 32-bit client ids and clocks never are)
    if marks.find(_SEVEN) >= 0 and _TOO_BIG.search(sv) is not None:
        raise RemoteProtocolError("state vector holds an integer beyond 2**53-1")
    values = marks.count(0)
    if values != 1 + 2 * n:
        if values < 1 + 2 * n:
            raise RemoteProtocolError("state vector is truncated")
        raise RemoteProtocolError(f"state vector has {values - 1 - 2 * n} trailing values")
    return n


def decode_state_vector(sv: bytes) -> dict[int, int]:
    """A Yjs v1 state vector as {client: clock}."""
    r = Reader(sv, "state vector")
    n = r.var_uint()
    if n > len(sv):
        raise RemoteProtocolError(f"state vector claims {n} entries in {len(sv)} bytes")
    out: dict[int, int] = {}
    for _ in range(n):
        client = r.var_uint()
        out[client] = r.var_uint()
    r.finish()
    return out


def encode_awareness(entries: list[AwarenessEntry] | tuple[AwarenessEntry, ...]) -> bytes:
    """The awareness update body (without the message kind) for ``entries``."""
    out = bytearray(var_uint(len(entries)))
    for e in entries:
        out += var_uint(e.client) + var_uint(e.clock) + var_string(e.state)
    return bytes(out)


def sync_message(step: int, payload: bytes) -> bytes:
    """A complete sync message: step 1 with a state vector, step 2 or update with an update."""
    if step not in _STEP_NAMES:
        raise ValueError(f"unknown sync step {step}")
    return var_uint(MESSAGE_SYNC) + var_uint(step) + var_bytes(payload)


def awareness_message(entries: list[AwarenessEntry] | tuple[AwarenessEntry, ...]) -> bytes:
    return var_uint(MESSAGE_AWARENESS) + var_bytes(encode_awareness(entries))


def query_awareness_message() -> bytes:
    return var_uint(MESSAGE_QUERY_AWARENESS)


def permission_denied_message(reason: str) -> bytes:
    """The y-protocols auth message a ``WebsocketProvider`` logs as "Permission denied"."""
    return var_uint(MESSAGE_AUTH) + var_uint(0) + var_string(reason)
