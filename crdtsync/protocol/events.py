"""What the protocol core hands back: one event per frame received (one ``Ack`` per push an ACK frame
answers), plus ``ProtocolError`` for garbage.

Events are plain frozen dataclasses; the same classes are given to ``Connection.send`` to emit frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .frames import FEATURES, MAX_FRAME

__all__ = ["Ack", "Acks", "Bye", "Change", "Changes", "Event", "Hello", "Item", "Live", "ProtocolError", "Pull", "Push",
           "Rejection", "Welcome"]

Names = tuple[str, ...] | Literal["*"]


@dataclass(frozen=True)
class Hello:
    """Client to relay, first frame: who the device is. ``client``: the client's name and version, then
    the optional fields it understands (``FEATURES``), as words: the relay sends those only to a client
    that names them (an older client, "crdtsync/0.1", names none)."""

    device: str
    client: str = " ".join(("crdtsync/0.2", *FEATURES))

    def understands(self, feature: str) -> bool:
        return feature in self.client.split()


@dataclass(frozen=True)
class Welcome:
    """Relay to client, after HELLO: the user the token belongs to, the relay's identity (cursors are only
    meaningful for one relay log), its head and floor sequence numbers, the collections granted, and the
    largest frame it accepts (a push is made to fit it; a change that cannot becomes an ``error``), and
    ``last``: the id of this device's change it stored last (0 if none), for the device to tell whether
    its store is behind what it sent (``Replica.last_acknowledged``).

    ``scopes`` (only to a client whose HELLO asked for it; None otherwise): for each readable collection the
    grant limits by ``where``, a fingerprint of that limit. A device whose limit changed since its last
    sync (a tokens reload) is told so: it resyncs the collection and drops what is no longer in scope.

    ``schema`` (only to a client whose HELLO asked for it; None otherwise): a fingerprint of the relay's
    schema. A device that sees it change retries the changes the relay refused as ``invalid`` or ``gone``:
    the relay was restarted with a new schema, which may accept them now (a device upgraded before it)."""

    user: str
    relay: str
    head: int
    floor: int
    read: Names
    write: Names
    max_frame: int = MAX_FRAME
    last: int = 0
    scopes: Mapping[str, str] | None = None
    schema: str | None = None


@dataclass(frozen=True)
class Change:
    """One pending change of a device: its change id (HLC time), record, and Yjs update."""

    change_id: int
    collection: str
    record: str
    update: bytes


@dataclass(frozen=True)
class Push:
    """Client to relay: pending changes, in the order they were made."""

    id: int
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class Rejection:
    change_id: int
    code: str
    reason: str


@dataclass(frozen=True)
class Ack:
    """Relay to client, once a push is durably stored: every change of it is ``ok`` (stored), ``rejected``
    (with a code: invalid, forbidden, gone) or ``held`` (neither stored nor rejected; it stays pending):
    behind an earlier change of the same record that was rejected or held, or building on writes the
    relay does not have yet.

    ``waits`` (only to a client whose HELLO asked for it; empty otherwise): ``(change id, reason)`` of the
    held changes that wait for writes the relay does not have, each with why (whose writes, and what the
    user can do). A change held only behind an earlier one of its record has no entry of its own."""

    id: int
    ok: tuple[int, ...]
    rejected: tuple[Rejection, ...] = ()
    held: tuple[int, ...] = ()
    waits: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Acks:
    """Relay to client, only sent: the acks of several pushes in flight in one ACK frame (a write group
    commits many pushes at once). Their pushes must hold distinct change ids, so that the receiving core
    can tell the outcomes apart: it hands back one ``Ack`` per push, in this order."""

    acks: tuple[Ack, ...]


@dataclass(frozen=True)
class Pull:
    """Client to relay: send what changed since ``since`` (in these collections, or all readable ones).
    ``relay`` is the relay id the cursor belongs to; ``live`` asks for live changes once caught up.
    ``returns``: ids of changes this device discarded that may have reached the relay before: the relay
    sends back the records it stored any of them in (a device is not sent its own changes otherwise)."""

    id: int
    since: int
    relay: str | None = None
    collections: tuple[str, ...] | None = None
    live: bool = False
    returns: tuple[int, ...] = ()


@dataclass(frozen=True)
class Item:
    """One record update from the relay, at log sequence number ``seq``."""

    collection: str
    record: str
    seq: int
    update: bytes


@dataclass(frozen=True)
class Changes:
    """Relay to client, one page of a pull: ``done`` of ``total`` log entries covered so far; ``to`` is the
    cursor the client may store once the page is applied (None on the pages of a full resync but the last);
    ``more`` says more pages follow; ``reset`` that this is a full resync of the scope."""

    id: int
    items: tuple[Item, ...]
    done: int
    total: int
    to: int | None
    more: bool
    reset: bool = False


@dataclass(frozen=True)
class Live:
    """Relay to client: changes just stored, from other devices, within the client's scope."""

    items: tuple[Item, ...]


@dataclass(frozen=True)
class Bye:
    """Either way: the sender is closing, with a websocket-style close code and a reason."""

    code: int
    reason: str


@dataclass(frozen=True)
class ProtocolError:
    """Not a frame: the peer sent garbage or broke the protocol. The core has queued a BYE with the same
    code and reason and is now closed."""

    code: int
    reason: str


Event = Hello | Welcome | Push | Ack | Acks | Pull | Changes | Live | Bye | ProtocolError
