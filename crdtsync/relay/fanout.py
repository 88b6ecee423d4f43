"""Fan-out of one committed write group: each distinct LIVE frame is made (and encoded) once.

Every connected device in the same read scope that was sent the same selection of the group's changes gets
the very same bytes: the frame is built and checked once per scope instead of once per device. A device's
selection still depends on the device (its own changes, the collections it went live for, what it was
sent already), and the items on its grant (records limited by ``where`` are sent whole, and only when in
scope), so frames are keyed by the grant's read scope and the selected changes.
"""

from __future__ import annotations

from collections.abc import Hashable

from ..protocol.connection import encode_event
from ..protocol.events import Item, Live
from .auth import Grant
from .log import Accepted, RelayLog

__all__ = ["LiveFrames", "scope_key"]


def scope_key(grant: Grant) -> Hashable:
    """What decides how a change reaches a device with this grant. Grants without ``where`` limits are
    told apart by the collections they may read alone (an open relay makes a new grant per connection);
    a limited grant is its own scope (its conditions may hold unhashable values)."""
    if grant.where:
        return ("limited", id(grant))
    return ("collections", grant.read, grant.write)


class LiveFrames:
    """The LIVE frames of one write group (``accepted``, in seq order), made on demand and shared between
    devices.

    Most devices are sent the whole group (none of it is theirs, they went live for every collection it
    touches, and they were sent nothing of it yet): ``whole`` tells, without a look at each change."""

    def __init__(self, log: RelayLog, accepted: list[Accepted]) -> None:
        self.log = log
        self.accepted = accepted
        self._devices = {a.device for a in accepted}
        self._collections = {a.collection for a in accepted}
        self._all = tuple(a.seq for a in accepted)
        self._items: dict[tuple[Hashable, int], Item | None] = {}
        self._frames: dict[tuple[Hashable, tuple[int, ...]], tuple[Live, bytes] | None] = {}

    def whole(self, device: str, sent_to: int, collections: frozenset[str] | None) -> bool:
        """Whether a device (went live for ``collections``, None: all; sent everything up to ``sent_to``)
        is to be sent every change of the group."""
        return bool(self.accepted) and sent_to < self._all[0] and device not in self._devices \
            and (collections is None or self._collections <= collections)

    @property
    def last(self) -> int:
        return self._all[-1]

    def frame(self, scope: Hashable, grant: Grant, selected: list[Accepted]) -> tuple[Live, bytes] | None:
        """The LIVE event and its encoded frame for ``selected`` (some of the group's changes, in order) as
        seen with ``grant`` (whose ``scope_key`` is ``scope``); None when none of them is in its scope."""
        key = (scope, self._all if len(selected) == len(self._all) else tuple(a.seq for a in selected))
        if key in self._frames:
            return self._frames[key]
        items = []
        for a in selected:
            ik = (scope, a.seq)
            if ik in self._items:
                item = self._items[ik]
            else:
                item = self._items[ik] = self.log.item_for(grant, a)
            if item is not None:
                items.append(item)
        made = None
        if items:
            ev = Live(tuple(items))
            made = (ev, encode_event(ev))
        self._frames[key] = made
        return made
