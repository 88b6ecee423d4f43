"""The sync connection state machine, with no I/O: fed bytes, it hands back events and bytes to send.

Modelled on h11 and the sans-I/O core of websockets. Both ends use the same class with a different
``Role``. Every allowed (role, state, direction, frame kind) is one row of ``TRANSITIONS``; anything else is
refused: by ``LocalProtocolError`` when *this* side tries it (a bug in the caller), by a ``ProtocolError``
event plus a BYE frame when the *peer* does it (the core then is ``CLOSED`` and ignores further input)::

    client: IDLE --send HELLO--> AWAIT_WELCOME --recv WELCOME--> READY (send PUSH/PULL, recv ACK/CHANGES/LIVE)
    relay:  IDLE --recv HELLO--> HELLO_RECEIVED --send WELCOME--> READY (recv PUSH/PULL, send ACK/CHANGES/LIVE)
    any state but CLOSED --send or recv BYE, or peer garbage--> CLOSED

Beyond the table, the core checks the order of requests and answers: an ACK must answer pushes in flight
(one, or several whose change ids are distinct) and account for each of their changes exactly once; the
receiving core splits it into one ``Ack`` event per push. CHANGES must answer the pull in flight; a peer may
not reuse a push id that is still in flight or start a second pull before the first one finished.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import LocalProtocolError
from .events import (
    Ack,
    Acks,
    Bye,
    Change,
    Changes,
    Event,
    Hello,
    Item,
    Live,
    ProtocolError,
    Pull,
    Push,
    Rejection,
    Welcome,
)
from .frames import MAX_FRAME, MAX_PUSH, MAX_REASON, FrameError, Kind, decode_parts, encode_frame

__all__ = ["CLOSE_CODES", "TRANSITIONS", "Connection", "Direction", "Role", "State", "encode_event"]


class Role(enum.Enum):
    CLIENT = "client"
    RELAY = "relay"


class State(enum.Enum):
    IDLE = "idle"
    AWAIT_WELCOME = "await-welcome"
    HELLO_RECEIVED = "hello-received"
    READY = "ready"
    CLOSED = "closed"


class Direction(enum.Enum):
    SEND = "send"
    RECV = "recv"


C, R = Role.CLIENT, Role.RELAY
S, V = Direction.SEND, Direction.RECV

# (role, state, direction, kind) -> next state. BYE is added below for every state but CLOSED.
TRANSITIONS: dict[tuple[Role, State, Direction, Kind], State] = {
    (C, State.IDLE, S, Kind.HELLO): State.AWAIT_WELCOME,
    (C, State.AWAIT_WELCOME, V, Kind.WELCOME): State.READY,
    (C, State.READY, S, Kind.PUSH): State.READY,
    (C, State.READY, S, Kind.PULL): State.READY,
    (C, State.READY, V, Kind.ACK): State.READY,
    (C, State.READY, V, Kind.CHANGES): State.READY,
    (C, State.READY, V, Kind.LIVE): State.READY,
    (R, State.IDLE, V, Kind.HELLO): State.HELLO_RECEIVED,
    (R, State.HELLO_RECEIVED, S, Kind.WELCOME): State.READY,
    (R, State.READY, V, Kind.PUSH): State.READY,
    (R, State.READY, V, Kind.PULL): State.READY,
    (R, State.READY, S, Kind.ACK): State.READY,
    (R, State.READY, S, Kind.CHANGES): State.READY,
    (R, State.READY, S, Kind.LIVE): State.READY,
}
for _role in Role:
    for _state in State:
        if _state is not State.CLOSED:
            for _dir in Direction:
                TRANSITIONS[(_role, _state, _dir, Kind.BYE)] = State.CLOSED

# TRANSITIONS by (role, state, direction): kind -> next state, the rows a connection in that state looks up
_ROWS: dict[tuple[Role, State, Direction], dict[Kind, State]] = {
    (_role, _state, _dir): {} for _role in Role for _state in State for _dir in Direction}
for (_role, _state, _dir, _kind), _nxt in TRANSITIONS.items():
    _ROWS[(_role, _state, _dir)][_kind] = _nxt

# close codes used by crdtsync (4000-4999 are free for applications in RFC 6455)
CLOSE_CODES: dict[int, str] = {
    1000: "normal closure",
    1001: "going away (relay shutting down)",
    1009: "frame too large",
    4400: "protocol error (malformed or out-of-order frame)",
    4401: "unauthorized (missing or unknown token)",
    4403: "forbidden (not granted)",
    4408: "too slow (fell behind the live stream; reconnect to catch up)",
    4429: "rate limit exceeded",
}

# the kinds whose sending ``_guard_send`` checks and ``_commit_send`` records (pushes, pulls and their answers)
_GUARDED = frozenset({Kind.PUSH, Kind.PULL, Kind.ACK, Kind.CHANGES})

_EVENT_KIND: dict[type[Any], Kind] = {Hello: Kind.HELLO, Welcome: Kind.WELCOME, Push: Kind.PUSH, Ack: Kind.ACK,
                                      Acks: Kind.ACK, Pull: Kind.PULL, Changes: Kind.CHANGES, Live: Kind.LIVE,
                                      Bye: Kind.BYE}


def _names(v: Any) -> Any:
    return "*" if v == "*" else tuple(v)


def _clip(reason: str) -> str:
    """A reason cut to the frame limit (``MAX_REASON``), marked as cut: a refusal naming a long record id or
    value must reach the device, not fail to encode and end the session with 1011."""
    return reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 1] + "\u2026"


def _to_frame(ev: Event) -> tuple[Kind, dict[str, Any], list[bytes]]:
    # the frames sent once per change or per write group first
    if isinstance(ev, Push):
        return (Kind.PUSH, {"id": ev.id, "changes": [[c.change_id, c.collection, c.record] for c in ev.changes]},
                [c.update for c in ev.changes])
    if isinstance(ev, Live):
        return Kind.LIVE, {"items": [[i.collection, i.record, i.seq] for i in ev.items]}, [i.update for i in ev.items]
    if isinstance(ev, Hello):
        return Kind.HELLO, {"device": ev.device, "client": ev.client}, []
    if isinstance(ev, Welcome):
        h = {"user": ev.user, "relay": ev.relay, "head": ev.head, "floor": ev.floor,
             "read": ev.read if ev.read == "*" else list(ev.read),
             "write": ev.write if ev.write == "*" else list(ev.write), "max_frame": ev.max_frame, "last": ev.last}
        if ev.scopes is not None:
            h["scopes"] = dict(ev.scopes)
        if ev.schema is not None:
            h["schema"] = ev.schema
        return Kind.WELCOME, h, []
    if isinstance(ev, Ack):
        h = {"ids": [ev.id], "ok": list(ev.ok), "held": list(ev.held),
             "rejected": [[r.change_id, r.code, _clip(r.reason)] for r in ev.rejected]}
        if ev.waits:  # (an optional field: only in the ACKs of clients that asked for it)
            h["waits"] = [[i, _clip(why)] for i, why in ev.waits]
        return Kind.ACK, h, []
    if isinstance(ev, Acks):
        h = {"ids": [a.id for a in ev.acks], "ok": [i for a in ev.acks for i in a.ok],
             "held": [i for a in ev.acks for i in a.held],
             "rejected": [[r.change_id, r.code, _clip(r.reason)] for a in ev.acks for r in a.rejected]}
        waits = [[i, _clip(why)] for a in ev.acks for i, why in a.waits]
        if waits:
            h["waits"] = waits
        return Kind.ACK, h, []
    if isinstance(ev, Pull):
        return Kind.PULL, {"id": ev.id, "since": ev.since, "relay": ev.relay, "live": ev.live,
                           "collections": None if ev.collections is None else list(ev.collections),
                           "returns": list(ev.returns)}, []
    if isinstance(ev, Changes):
        return (Kind.CHANGES, {"id": ev.id, "items": [[i.collection, i.record, i.seq] for i in ev.items],
                               "done": ev.done, "total": ev.total, "to": ev.to, "more": ev.more,
                               "reset": ev.reset}, [i.update for i in ev.items])
    if isinstance(ev, Bye):
        return Kind.BYE, {"code": ev.code, "reason": _clip(ev.reason)}, []
    raise LocalProtocolError(f"{type(ev).__name__} is not a frame that can be sent")


@dataclass(frozen=True)
class _AckFrame:
    """A received ACK frame, before it is split into one ``Ack`` per push it answers."""

    ids: tuple[int, ...]
    ok: tuple[int, ...]
    rejected: tuple[Rejection, ...]
    held: tuple[int, ...]
    waits: tuple[tuple[int, str], ...]


def _hello(h: dict[str, Any], b: tuple[bytes, ...]) -> Hello:
    return Hello(h["device"], h["client"])


def _welcome(h: dict[str, Any], b: tuple[bytes, ...]) -> Welcome:
    return Welcome(h["user"], h["relay"], h["head"], h["floor"], _names(h["read"]), _names(h["write"]), h["max_frame"],
                   h["last"], h.get("scopes"), h.get("schema"))


def _push(h: dict[str, Any], b: tuple[bytes, ...]) -> Push:
    return Push(h["id"], tuple([Change(c[0], c[1], c[2], u) for c, u in zip(h["changes"], b, strict=True)]))


def _ack(h: dict[str, Any], b: tuple[bytes, ...]) -> _AckFrame:
    # split into one Ack per push by the receiving core, which knows their changes
    return _AckFrame(tuple(h["ids"]), tuple(h["ok"]), tuple(Rejection(*r) for r in h["rejected"]), tuple(h["held"]),
                     tuple((w[0], w[1]) for w in h.get("waits", ())))


def _pull(h: dict[str, Any], b: tuple[bytes, ...]) -> Pull:
    cs = h["collections"]
    return Pull(h["id"], h["since"], h["relay"], None if cs is None else tuple(cs), h["live"], tuple(h["returns"]))


def _changes(h: dict[str, Any], b: tuple[bytes, ...]) -> Changes:
    return Changes(h["id"], tuple([Item(i[0], i[1], i[2], u) for i, u in zip(h["items"], b, strict=True)]),
                   h["done"], h["total"], h["to"], h["more"], h["reset"])


def _live(h: dict[str, Any], b: tuple[bytes, ...]) -> Live:
    return Live(tuple([Item(i[0], i[1], i[2], u) for i, u in zip(h["items"], b, strict=True)]))


def _bye(h: dict[str, Any], b: tuple[bytes, ...]) -> Bye:
    return Bye(h["code"], h["reason"])


# the event of a decoded frame (its header already checked by the decoder), by kind
_FROM_FRAME: dict[Kind, Callable[[dict[str, Any], tuple[bytes, ...]], Event | _AckFrame]] = {
    Kind.HELLO: _hello, Kind.WELCOME: _welcome, Kind.PUSH: _push, Kind.ACK: _ack, Kind.PULL: _pull,
    Kind.CHANGES: _changes, Kind.LIVE: _live, Kind.BYE: _bye}


def encode_event(event: Event) -> bytes:
    """The frame for ``event``, for a sender that shares one frame between several connections (the relay
    fans a LIVE frame out to every device in the same scope): pass it to ``Connection.send(event, encoded)``.
    Raises ``LocalProtocolError`` if the event cannot be encoded."""
    if type(event) not in _EVENT_KIND:
        raise LocalProtocolError(f"{type(event).__name__} is not a frame that can be sent")
    k, header, blobs = _to_frame(event)
    try:
        return encode_frame(k, header, blobs)
    except FrameError as e:
        raise LocalProtocolError(f"cannot encode {k.name}: {e}") from None


class Connection:
    """One end of a sync connection. ``send(event)`` queues a frame; ``receive_data(bytes)`` takes one
    frame from the peer; ``events_received()`` and ``data_to_send()`` hand back what came of them."""

    def __init__(self, role: Role, *, max_frame: int = MAX_FRAME, max_pushes_in_flight: int = 64,
                 max_push: int = MAX_PUSH) -> None:
        self.role = role
        self.max_push = max_push
        self.state = State.IDLE
        self._recv_rows = _ROWS[(role, State.IDLE, Direction.RECV)]  # the TRANSITIONS rows of this state
        self._send_rows = _ROWS[(role, State.IDLE, Direction.SEND)]
        self.max_frame = max_frame
        self.max_pushes_in_flight = max_pushes_in_flight
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._events: list[Event] = []
        self._out: list[bytes] = []
        self._pushes: dict[int, frozenset[int]] = {}  # push id -> its change ids, until acknowledged
        self._pull: int | None = None  # the pull in flight

    # -- output ------------------------------------------------------------------------------------------

    def events_received(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    @property
    def pushes_in_flight(self) -> int:
        return len(self._pushes)

    @property
    def pull_in_flight(self) -> int | None:
        return self._pull

    # -- this side -----------------------------------------------------------------------------------------

    def send(self, event: Event, encoded: bytes | None = None) -> None:
        """Queue a frame. Raises ``LocalProtocolError`` if the state machine does not allow it now.

        ``encoded``: the frame already made by ``encode_event(event)`` (the same event), so that a frame
        sent on many connections is encoded and checked once; the state machine still checks the event."""
        kind = _EVENT_KIND.get(type(event))
        if kind is None:
            raise LocalProtocolError(f"{type(event).__name__} is not a frame that can be sent")
        nxt = self._send_rows.get(kind)
        if nxt is None:
            raise LocalProtocolError(f"a {self.role.value} cannot send {kind.name} in state {self.state.value}")
        guarded = kind in _GUARDED
        if guarded:
            self._guard_send(event)
        data = encode_event(event) if encoded is None else encoded
        if len(data) > self.max_frame:
            raise LocalProtocolError(f"{kind.name} of {len(data)} bytes exceeds the frame limit {self.max_frame}")
        if guarded:
            self._commit_send(event)
        self._out.append(data)
        if nxt is not self.state:
            self._enter(nxt)
        if kind is Kind.BYE:
            assert isinstance(event, Bye)
            self.close_code, self.close_reason = event.code, event.reason

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Say goodbye (if not closed yet); the shell then closes the websocket with the same code."""
        if self.state is not State.CLOSED:
            self.send(Bye(code, reason[:500]))

    def _guard_send(self, ev: Event) -> None:
        if isinstance(ev, Push):
            if ev.id in self._pushes:
                raise LocalProtocolError(f"push {ev.id} is still in flight")
            if len(self._pushes) >= self.max_pushes_in_flight:
                raise LocalProtocolError("too many pushes in flight; wait for their acks")
            ids = [c.change_id for c in ev.changes]
            if len(set(ids)) != len(ids):
                raise LocalProtocolError("a push holds the same change id twice")
            if len(ids) > self.max_push:
                raise LocalProtocolError(f"a push may hold at most {self.max_push} changes")
        elif isinstance(ev, Pull):
            if self._pull is not None:
                raise LocalProtocolError(f"pull {self._pull} is still in flight")
        elif isinstance(ev, Ack):
            self._guard_acks((ev,))
        elif isinstance(ev, Acks):
            self._guard_acks(ev.acks)
        elif isinstance(ev, Changes) and ev.id != self._pull:
            raise LocalProtocolError(f"no pull {ev.id} in flight")

    def _guard_acks(self, acks: tuple[Ack, ...]) -> None:
        if not acks:
            raise LocalProtocolError("an ACK answers at least one push")
        seen: set[int] = set()
        for ack in acks:
            expected = self._pushes.get(ack.id)
            if expected is None:
                raise LocalProtocolError(f"no push {ack.id} to acknowledge")
            if not _accounts_for(ack, expected):
                raise LocalProtocolError(f"ack {ack.id} must list each change of the push exactly once")
            if ack.waits and not _waits_held(ack.waits, ack.held):
                raise LocalProtocolError(f"ack {ack.id} gives reasons (waits) only for changes it holds, once each")
            if not seen.isdisjoint(expected):
                raise LocalProtocolError(f"push {ack.id} shares change ids with another push of the same ACK "
                                         "(or is in it twice): acknowledge it in an ACK of its own")
            seen |= expected

    def _commit_send(self, ev: Event) -> None:
        if isinstance(ev, Push):
            self._pushes[ev.id] = frozenset(c.change_id for c in ev.changes)
        elif isinstance(ev, Pull):
            self._pull = ev.id
        elif isinstance(ev, Ack):
            del self._pushes[ev.id]
        elif isinstance(ev, Acks):
            for ack in ev.acks:
                del self._pushes[ack.id]
        elif isinstance(ev, Changes) and not ev.more:
            self._pull = None

    # -- the peer ------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Take one frame (one websocket message) from the peer. Never raises on what the peer sent."""
        if self.state is State.CLOSED:
            return
        try:
            kind, header, blobs = decode_parts(data, self.max_frame)
        except FrameError as e:
            too_big = isinstance(data, bytes | bytearray) and len(data) > self.max_frame
            self._fail(1009 if too_big else 4400, str(e))
            return
        nxt = self._recv_rows.get(kind)
        if nxt is None:
            self._fail(4400, f"unexpected {kind.name} from the {_peer(self.role)} in state {self.state.value}")
            return
        try:
            event = _FROM_FRAME[kind](header, blobs)
        except (TypeError, ValueError) as e:  # decode_parts checked the header: this is a safety net
            self._fail(4400, f"bad {kind.name}: {e}")
            return
        if isinstance(event, _AckFrame):
            split = self._split_acks(event)
            if isinstance(split, str):
                self._fail(4400, split)
                return
            if nxt is not self.state:
                self._enter(nxt)
            self._events += split
            return
        problem = self._guard_recv(event)
        if problem is not None:
            self._fail(4400, problem)
            return
        if nxt is not self.state:
            self._enter(nxt)
        if isinstance(event, Bye):
            self.close_code, self.close_reason = event.code, event.reason
        self._events.append(event)

    def _split_acks(self, f: _AckFrame) -> list[Ack] | str:
        """One ``Ack`` per push the frame answers (each change goes to the push holding it), or what is
        wrong with the frame: a push not in flight (or twice), pushes sharing a change id, or a change
        accounted for not exactly once."""
        owner: dict[int, int] = {}  # change id -> the push holding it
        answered: set[int] = set()
        for pid in f.ids:
            expected = self._pushes.get(pid)
            if expected is None or pid in answered:
                return f"ack {pid} answers no push in flight"
            answered.add(pid)
            for cid in expected:
                if owner.setdefault(cid, pid) != pid:
                    return f"ack {list(f.ids)} answers pushes {owner[cid]} and {pid} that share change id {cid}"
        got = [*f.ok, *(r.change_id for r in f.rejected), *f.held]
        if len(got) != len(owner) or set(got) != owner.keys():
            return f"ack {list(f.ids)} does not account for each change of its pushes exactly once"
        if f.waits and not _waits_held(f.waits, f.held):
            return f"ack {list(f.ids)} gives reasons for changes it does not hold, or twice"
        if len(f.ids) == 1:
            acks = [Ack(f.ids[0], f.ok, f.rejected, f.held, f.waits)]
        else:
            acks = [Ack(pid, tuple(i for i in f.ok if owner[i] == pid),
                        tuple(r for r in f.rejected if owner[r.change_id] == pid),
                        tuple(i for i in f.held if owner[i] == pid),
                        tuple(w for w in f.waits if owner[w[0]] == pid)) for pid in f.ids]
        for pid in f.ids:
            del self._pushes[pid]
        return acks

    def _guard_recv(self, ev: Event) -> str | None:  # ACK frames: ``_split_acks``
        if isinstance(ev, Push):
            if ev.id in self._pushes:
                return f"push {ev.id} reused while still in flight"
            if len(self._pushes) >= self.max_pushes_in_flight:
                return "too many pushes in flight"
            ids = [c.change_id for c in ev.changes]
            if len(set(ids)) != len(ids):
                return f"push {ev.id} holds the same change id twice"
            if len(ids) > self.max_push:
                return f"push {ev.id} holds {len(ids)} changes, more than the limit of {self.max_push}"
            self._pushes[ev.id] = frozenset(ids)
        elif isinstance(ev, Pull):
            if self._pull is not None:
                return f"pull {ev.id} sent while pull {self._pull} is in flight"
            self._pull = ev.id
        elif isinstance(ev, Changes):
            if ev.id != self._pull:
                return f"changes {ev.id} answer no pull in flight"
            if ev.done > ev.total:
                return f"changes {ev.id} claim {ev.done} done of {ev.total}"
            if not ev.more:
                self._pull = None
        return None

    def _fail(self, code: int, reason: str) -> None:
        reason = _clip(reason)
        self._events.append(ProtocolError(code, reason))
        self._out.append(encode_frame(Kind.BYE, {"code": code, "reason": reason}))
        self._enter(State.CLOSED)
        self.close_code, self.close_reason = code, reason

    def _enter(self, state: State) -> None:
        self.state = state
        self._recv_rows = _ROWS[(self.role, state, Direction.RECV)]
        self._send_rows = _ROWS[(self.role, state, Direction.SEND)]

    def ack_for(self, push_id: int) -> frozenset[int] | None:
        """The change ids of a push still waiting for its ack (relay side), or None."""
        return self._pushes.get(push_id)


def _accounts_for(ack: Ack, expected: frozenset[int]) -> bool:
    if not ack.rejected and not ack.held:  # the usual ack: every change stored
        return len(ack.ok) == len(expected) and expected == set(ack.ok)
    got = [*ack.ok, *(r.change_id for r in ack.rejected), *ack.held]
    return len(got) == len(expected) and set(got) == expected


def _waits_held(waits: tuple[tuple[int, str], ...], held: tuple[int, ...]) -> bool:
    """Whether each reason of an ACK's ``waits`` is for one of its held changes, and one at most."""
    ids = [i for i, _ in waits]
    return len(set(ids)) == len(ids) and set(ids) <= set(held)


def _peer(role: Role) -> str:
    return "relay" if role is Role.CLIENT else "client"
