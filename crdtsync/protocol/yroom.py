"""A y-websocket room and one connection's session in it, sans I/O: bytes in, an ``Outcome`` out.

``YRoom`` holds a room's document (a pycrdt ``Doc``) and its awareness states. ``YSession`` is one
websocket connection to that room: feed it each binary message with ``receive()`` and carry out the
``Outcome`` it returns, in this order:

1. send ``reply`` frames to this connection;
2. send ``to_all`` frames (awareness) to every connection of the room, this one included: y-websocket
   clients drop a connection that has received nothing for 30 s, and a lone client's own awareness
   echo (renewed every 15 s) is what keeps it alive, exactly as with the reference server;
3. store each of ``updates`` durably, then ``YRoom.integrate()`` it and send the room's other connections
   ``sync_message(SYNC_UPDATE, applied.update)`` (what the document integrated, if anything), not the
   sender's bytes: the document only ever holds what is on disk, and online clients see what later ones do;
   send it to the sender too when ``applied.unblocked`` (it let in waiting updates the sender lacks);
4. if ``close`` is set, send what is queued and close the connection with its code and reason.

It mirrors the reference server (y-websocket's ``utils.js``): on connect the server sends sync step 1 and
the current awareness states; it answers a client's step 1 with step 2; it relays awareness and drops a
leaving connection's awareness states. It also answers query-awareness, which the reference ignores.

Step 2 carries what the room's document holds, not the updates the room holds pending (waiting for one
not received yet): unlike Yjs's ``encodeStateAsUpdate``, which merges them in. Yrs keeps pending what it
reads and cannot integrate, and some of that no Yjs client can read: one 21-byte update held pending and
merged into every step 2 made every Yjs client that joined throw and show an empty document, for good.
What the room integrates later is sent to every connection then (step 3 below), so a client that joined
meanwhile loses nothing. Updates that no Yjs client writes (``yupdate.structure_error``: an item whose
origin is a later clock of its own client, ...) are refused as malformed before anything is stored.

A read-only session may read and may publish awareness (presence), but a step 2 or update that would
change the document is refused: it is not applied, the client is told why (a y-protocols permission-denied
message, which ``WebsocketProvider`` logs) and closed with code 4403. Updates that bring nothing new, like
the empty step 2 every fresh client answers with, or a reconnecting reader's copy of the room (with any
updates it holds pending that the room holds pending too), are fine.

Close codes: 4400-4499 tell ``WebsocketProvider`` (y-websocket 3.1+) not to reconnect, which is right for
a client that sends garbage or writes without permission; 1011 and 1013 make it reconnect and resync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pycrdt import Doc, get_state, get_update, merge_updates

from ..errors import RemoteProtocolError
from .yupdate import structure_error
from .ywebsocket import (
    MAX_STATE_VECTOR_ENTRIES,
    SYNC_STEP1,
    SYNC_STEP2,
    AwarenessEntry,
    AwarenessMessage,
    QueryAwareness,
    Reader,
    SyncMessage,
    awareness_message,
    decode_state_vector,
    parse_message,
    permission_denied_message,
    state_vector_entries,
    sync_message,
    var_uint,
)

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_MALFORMED",
    "CLOSE_READ_ONLY",
    "CLOSE_SERVER_ERROR",
    "CLOSE_TOO_SLOW",
    "EMPTY_UPDATE",
    "MAX_AWARENESS_CLIENTS",
    "MAX_READ_ONLY_CHECKS",
    "Applied",
    "CloseRequest",
    "Outcome",
    "YRoom",
    "YSession",
]

CLOSE_GOING_AWAY = 1001
CLOSE_SERVER_ERROR = 1011
CLOSE_TOO_SLOW = 1013
CLOSE_MALFORMED = 4400
CLOSE_READ_ONLY = 4403

EMPTY_UPDATE = b"\x00\x00"

# Client ids one connection may publish awareness states for. A WebsocketProvider publishes one, its
# document's; each further id costs every client of the room a presence entry, and every joiner a copy.
MAX_AWARENESS_CLIENTS = 16

# A read-only WebsocketProvider sends one step 2 a connection (the answer to ours) and updates only when
# it is edited, which is refused. Checking an update that brings no new items costs a copy of the room,
# so a reader sending more than this many non-empty ones is closed rather than served.
MAX_READ_ONLY_CHECKS = 8


def _is_pycrdt_error(exc: BaseException) -> bool:
    """A Yrs error or panic: pyo3's ``PanicException`` derives from BaseException, not Exception."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _lacking_deletions(rest: bytes, state: bytes) -> bytes:
    """``rest`` (an update with no structs) cut to the deleted ranges that reach past ``state``: those of
    items a document at ``state`` lacks (it has the others: their deletion is already in it or applied)."""
    have = dict(decode_state_vector(state))
    r = Reader(rest, "delete set")
    r.var_uint()  # no structs
    kept: list[tuple[int, list[tuple[int, int]]]] = []
    for _ in range(r.var_uint()):
        client = r.var_uint()
        clock_max = have.get(client, 0)
        ranges = [(r.var_uint(), r.var_uint()) for _ in range(r.var_uint())]
        ranges = [(c, n) for c, n in ranges if c + n > clock_max]
        if ranges:
            kept.append((client, ranges))
    if not kept:
        return EMPTY_UPDATE
    out = bytearray(b"\x00" + var_uint(len(kept)))
    for client, ranges in kept:
        out += var_uint(client) + var_uint(len(ranges))
        for c, n in ranges:
            out += var_uint(c) + var_uint(n)
    return bytes(out)


def _remainder(update: bytes, state: bytes) -> bytes:
    """The part of ``update`` a document at ``state`` has not integrated (``EMPTY_UPDATE`` if none): its
    structs the document lacks, and its deletions of items the document lacks. When structs remain, Yrs
    keeps the update's delete set whole beside them (cutting it would mean re-encoding the structs)."""
    rest = get_update(update, state)
    if rest[:1] != b"\x00" or rest == EMPTY_UPDATE:
        return rest
    return _lacking_deletions(rest, state)


def _integrated(update: bytes, state: bytes) -> bool:
    """Whether all of ``update`` is in a document whose state vector is ``state``: every struct (the diff
    against ``state`` has none left), and every deletion is of an item the document has (each deleted range
    lies under the document's clock for its client). The idea of ``crdtsync.model.merging.integrated``."""
    return _remainder(update, state) == EMPTY_UPDATE


_CONTAINED_UP_TO = 32  # waiting updates up to which a new one is checked for being contained in them


@dataclass(frozen=True)
class CloseRequest:
    code: int
    reason: str


@dataclass
class Outcome:
    """What the shell must do after one message (see the module docstring for the order)."""

    reply: list[bytes] = field(default_factory=list)
    to_all: list[bytes] = field(default_factory=list)
    updates: list[bytes] = field(default_factory=list)
    close: CloseRequest | None = None
    error: RemoteProtocolError | None = None


@dataclass(frozen=True)
class Applied:
    """What ``YRoom.integrate`` did: ``error`` (why Yrs refused the update: the document is unchanged), or
    ``update``, the update of the room document's transaction (what it integrated, as Yrs encodes it;
    None when nothing changed: a repeat, or an update that waits for a missing one). ``unblocked``: the
    transaction also let in (part of) updates the room held waiting, which the sender lacks too."""

    update: bytes | None = None
    error: str | None = None
    unblocked: bool = False


class YRoom:
    """A room's document and awareness. ``full_state()`` is its state to store (one merged Yjs update)."""

    def __init__(self, name: str, state: bytes | None = None) -> None:
        self.name = name
        self.doc: Doc[Any] = Doc()
        # updates not wholly in the document: structs Yrs keeps pending (they build on one not received
        # yet), or deletions of items the document lacks (Yrs keeps them pending too). The document's own
        # encoding leaves both out, so a stored state made from it alone would lose them (a sync step 2 leaves
        # them out on purpose: ``diff``).
        # Each entry is a remainder (what the document lacks of an update, see ``_remainder``), kept once
        self.waiting: list[bytes] = []
        self._held: tuple[list[bytes], bytes] = ([], EMPTY_UPDATE)  # ``waiting`` and their merge
        if state:
            self.apply(state)
        self.awareness: dict[int, AwarenessEntry] = {}
        # client id -> the ``controlled`` set of the live connection that publishes its state (``YSession``)
        self.publisher: dict[int, set[int]] = {}

    def state_vector(self) -> bytes:
        return self.doc.get_state()

    def full_state(self) -> bytes:
        """The room's state to store: the document, and the updates still waiting for a missing one (not for
        clients: ``diff``)."""
        if not self.waiting:
            return self.doc.get_update()
        return merge_updates(self.doc.get_update(), *self.waiting)

    def diff(self, state_vector: bytes) -> bytes:
        """What a peer at ``state_vector`` lacks of the document (sync step 2); ``RemoteProtocolError`` if it
        is garbage, or names more than ``MAX_STATE_VECTOR_ENTRIES`` clients beyond the room's. Not what
        waits: the room could not integrate it, and Yjs may not be able to read it (see the module
        docstring); the peer gets it, as every connection does, once the document takes it in."""
        state = self.doc.get_state()
        state_vector_entries(state_vector, Reader(state).var_uint() + MAX_STATE_VECTOR_ENTRIES)
        try:
            return self.doc.get_update(state_vector)
        except BaseException as e:
            if not _is_pycrdt_error(e):
                raise
            raise RemoteProtocolError(f"state vector rejected by Yrs: {e}") from None

    @staticmethod
    def check_update(update: bytes, *, to_store: bool = True) -> None:
        """Raise ``RemoteProtocolError`` unless ``update`` decodes as a Yjs v1 update, and, if it is
        ``to_store``, one that a Yjs client could have written (``structure_error``: read in Python, about
        70 ms a MiB, so not for a read-only client's update, which is never stored)."""
        # Yrs sizes a table by the update's first count before reading on: four bytes claiming 2**28
        # clients cost over a second. Each client takes at least 3 bytes, so refuse such counts early.
        clients = Reader(update, "update").var_uint()
        if clients > len(update) // 3:
            raise RemoteProtocolError(f"update claims {clients} clients in {len(update)} bytes")
        try:
            get_state(update)
        except BaseException as e:
            if not _is_pycrdt_error(e):
                raise
            raise RemoteProtocolError("update does not decode as a Yjs v1 update") from None
        impossible = structure_error(update) if to_store else None
        if impossible is not None:
            raise RemoteProtocolError(impossible)

    def is_news(self, update: bytes) -> bool:
        """Whether applying ``update`` would change the room (its document, or what it holds waiting: a
        reader that holds a pending update, from a relay version whose step 2 carried them, sends it back);
        ``RemoteProtocolError`` if Yrs refuses it."""
        if update == EMPTY_UPDATE:
            return False
        # the part of the update the document lacks: its first varuint counts the clients with new structs
        # (``get_state(update)`` cannot tell: it leaves out structs not starting at clock 0, i.e. those of
        # every incremental update)
        try:
            rest = get_update(update, self.doc.get_state())
        except BaseException as e:
            if not _is_pycrdt_error(e):
                raise
            raise RemoteProtocolError(f"update rejected by Yrs: {e}") from None
        if rest[:1] != b"\x00":
            # new structs, unless the room holds them waiting (a reader that has them pending sends them back
            # each time it connects): then nothing the room lacks, merged in, is new
            if not self.waiting:
                return True
            full = merge_updates(self.doc.get_update(), *self.waiting)
            return merge_updates(full, update) != merge_updates(full)
        if rest == EMPTY_UPDATE:
            return False  # no new structs and no deletions at all
        # Only deletions can be new: try them on a scratch copy, which costs a copy of the room.
        scratch: Doc[Any] = Doc()
        scratch.apply_update(self.doc.get_update())
        changed: list[bool] = []
        sub = scratch.observe(lambda _event: changed.append(True))
        try:
            scratch.apply_update(update)
        except BaseException as e:
            if not _is_pycrdt_error(e):
                raise
            raise RemoteProtocolError(f"update rejected by Yrs: {e}") from None
        finally:
            scratch.unobserve(sub)
        return bool(changed)

    def apply(self, update: bytes) -> str | None:
        """Apply a stored update; returns None, or why Yrs refused it (the document is then unchanged)."""
        return self._apply(update, capture=False).error

    def integrate(self, update: bytes) -> Applied:
        """Apply an update and return what the document integrated (see ``Applied``)."""
        return self._apply(update, capture=True)

    def _apply(self, update: bytes, *, capture: bool) -> Applied:
        # Yrs encodes a transaction's update only for a subscriber: loading a stored room skips that cost
        txns: list[bytes] = []
        sub = self.doc.observe(lambda event: txns.append(event.update)) if capture or self.waiting else None
        unblocked = False
        try:
            self.doc.apply_update(update)
            if txns and self.waiting:
                self._offer_waiting(txns)
            sv = self.doc.get_state()
            txn = txns[0] if len(txns) == 1 else (merge_updates(*txns) if txns else None)
            if txns and self.waiting:
                # the document changed: keep of each waiting update only what it still lacks
                kept = []
                for u in self.waiting:
                    rest = _remainder(u, sv)
                    unblocked = unblocked or rest != u
                    if rest != EMPTY_UPDATE:
                        kept.append(rest)
                self.waiting = kept
            if update != txn:
                rest = _remainder(update, sv)
                if rest != EMPTY_UPDATE and not self._holds_waiting(rest):
                    self.waiting.append(rest)
        except BaseException as e:
            if not _is_pycrdt_error(e):
                raise
            return Applied(error=f"Yrs refused an update: {e}")
        finally:
            if sub is not None:
                self.doc.unobserve(sub)
        return Applied(update=txn if capture else None, unblocked=unblocked)

    def _offer_waiting(self, txns: list[bytes]) -> None:
        """Apply the waiting updates again (their merge), while that takes something in (``txns`` grows), as
        long as few wait (``_CONTAINED_UP_TO``: with 32 small ones, an edit took about twice as long). Yrs
        (pycrdt 0.14) does not always take in waiting updates once the one they wait for came: a text's
        inserts U2, U3 and a map set U4 arriving as U4, U3, U2, then U1 left U2 and U3 waiting for good,
        and with them everything built on them."""
        if len(self.waiting) > _CONTAINED_UP_TO:
            return
        if self._held[0] != self.waiting:  # merged once for as long as the same updates wait
            self._held = (list(self.waiting), merge_updates(*self.waiting))
        held = self._held[1]
        for _ in range(len(self.waiting)):
            seen = len(txns)
            try:
                self.doc.apply_update(held)
            except BaseException as e:  # each was read when it came: should Yrs refuse them now, leave them
                if not _is_pycrdt_error(e):
                    raise
                return
            if len(txns) == seen:
                return

    def _holds_waiting(self, rest: bytes) -> bool:
        """Whether ``rest`` (a remainder) is already among the waiting updates: one of them byte for byte,
        or, while few wait (``_CONTAINED_UP_TO``), contained in them (merging it in changes nothing). That
        merge costs all that waits: done for every arrival among thousands (updates arriving in reverse
        order), it made taking them in quadratic, and stalled every room (10.5 s for 2,000, measured)."""
        if not self.waiting:
            return False
        if rest in self.waiting:
            return True
        if len(self.waiting) > _CONTAINED_UP_TO:
            return False
        held = merge_updates(*self.waiting)
        return merge_updates(held, rest) == merge_updates(held)

    def awareness_states(self) -> list[AwarenessEntry]:
        return [e for e in self.awareness.values() if not e.removed]

    def apply_awareness(self, entries: tuple[AwarenessEntry, ...], controlled: set[int]) -> list[AwarenessEntry]:
        """y-protocols' ``applyAwarenessUpdate`` rules; returns the entries that took effect. ``controlled``:
        the client ids whose state the connection set. ``RemoteProtocolError``, and nothing applied, if the
        entries would give it more than ``MAX_AWARENESS_CLIENTS``. The removal of a state the room does not
        hold is dropped: it changes nothing, and keeping each one made the room's states grow without end.

        An entry for a client id whose state another live connection publishes is ignored (not applied, not
        relayed): with a higher clock, anyone in the room, a read-only token too, replaced another client's
        presence for everyone and for that client itself. A provider echoes the states it receives, at the
        clocks it got them: those changed nothing anyway. Once that connection has closed, the id is free
        again (its client reconnecting publishes it anew)."""
        now: dict[int, AwarenessEntry] = {}
        for e in entries:
            publisher = self.publisher.get(e.client)
            if publisher is not None and publisher is not controlled:
                continue
            cur = now.get(e.client) or self.awareness.get(e.client)
            if cur is None and e.removed:
                continue
            cur_clock = 0 if cur is None else cur.clock
            if cur_clock < e.clock or (cur_clock == e.clock and e.removed and cur is not None and not cur.removed):
                now[e.client] = e
        added = [c for c, e in now.items() if not e.removed and c not in controlled]
        if added and len(controlled) + len(added) > MAX_AWARENESS_CLIENTS:
            raise RemoteProtocolError(f"awareness states of more than {MAX_AWARENESS_CLIENTS} clients from one "
                                      "connection")
        changed = []
        for e in entries:
            if now.get(e.client) is e:
                self.awareness[e.client] = e
                changed.append(e)
                if e.removed:
                    controlled.discard(e.client)
                    self.publisher.pop(e.client, None)
                else:
                    controlled.add(e.client)
                    self.publisher[e.client] = controlled
        return changed

    def remove_awareness(self, clients: set[int]) -> list[AwarenessEntry]:
        """Drop the states of ``clients``, the ``controlled`` set of a connection that left (their ids are free
        again); returns the removal entries to relay."""
        out = []
        for client in sorted(clients):
            if self.publisher.get(client) is clients:
                del self.publisher[client]
            cur = self.awareness.get(client)
            if cur is not None and not cur.removed:
                gone = AwarenessEntry(client, cur.clock, "null")
                self.awareness[client] = gone
                out.append(gone)
        return out


class YSession:
    """One connection to a room. ``closed`` is set once the session asked to close."""

    def __init__(self, room: YRoom, *, can_write: bool) -> None:
        self.room = room
        self.can_write = can_write
        self.controlled: set[int] = set()
        self.closed: CloseRequest | None = None
        self.received = 0
        self.read_only_checks = 0

    def opening(self) -> list[bytes]:
        """The frames to send as soon as the connection is in the room."""
        frames = [sync_message(SYNC_STEP1, self.room.state_vector())]
        states = self.room.awareness_states()
        if states:
            frames.append(awareness_message(states))
        return frames

    def receive(self, data: bytes) -> Outcome:
        """Handle one binary message. Never raises for peer garbage: that becomes ``close``/``error``."""
        if self.closed is not None:
            return Outcome()
        self.received += 1
        try:
            return self._receive(data)
        except RemoteProtocolError as e:
            return self._fail(CLOSE_MALFORMED, f"malformed message: {e}", e)

    def _fail(self, code: int, reason: str, error: RemoteProtocolError, reply: list[bytes] | None = None) -> Outcome:
        self.closed = CloseRequest(code, reason)
        return Outcome(reply=reply or [], close=self.closed, error=error)

    def _receive(self, data: bytes) -> Outcome:
        msg = parse_message(data)
        if isinstance(msg, SyncMessage):
            if msg.step == SYNC_STEP1:
                return Outcome(reply=[sync_message(SYNC_STEP2, self.room.diff(msg.payload))])
            self.room.check_update(msg.payload, to_store=self.can_write)
            if msg.payload == EMPTY_UPDATE:
                return Outcome()
            if not self.can_write:
                self.read_only_checks += 1
                if self.read_only_checks > MAX_READ_ONLY_CHECKS:
                    reason = "read-only: too many update messages"
                    return self._fail(CLOSE_READ_ONLY, reason, RemoteProtocolError(reason))
                if not self.room.is_news(msg.payload):
                    return Outcome()
                reason = f"read-only: this token may read room {self.room.name!r} but not change it"
                return self._fail(CLOSE_READ_ONLY, reason, RemoteProtocolError(f"{reason} ({msg.name} refused)"),
                                  reply=[permission_denied_message(reason)])
            return Outcome(updates=[msg.payload])
        if isinstance(msg, AwarenessMessage):
            changed = self.room.apply_awareness(msg.entries, self.controlled)
            return Outcome(to_all=[awareness_message(changed)] if changed else [])
        assert isinstance(msg, QueryAwareness)
        states = self.room.awareness_states()
        return Outcome(reply=[awareness_message(states)] if states else [])

    def leave(self) -> list[bytes]:
        """Frames for the room's other connections when this one goes: its awareness states removed."""
        gone = self.room.remove_awareness(self.controlled)
        self.controlled.clear()
        return [awareness_message(gone)] if gone else []
