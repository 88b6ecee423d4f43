"""Tracing what a remote update does to a record's Yjs document, for the relay's checks.

The relay checks each incoming change by what it changed: the slot and set keys it set, the history
entries it appended, the Yjs clients whose clock it moved (``relay/log.py``). Finding that out with
subscriptions made and dropped around each apply, pycrdt transactions and state vectors read before and
after cost more than all the checks together (about 60 us a change, against 8 for applying it). A
``Tracer`` subscribes once per Yrs document, on the Yrs types directly, and its callbacks fill a
``Traced`` only while it is armed: one bare transaction applies the update and its commit reports
everything, the document's new part and its state vectors before and after included.

The callbacks hold no strong reference to the document, its ``RecordDoc`` or the tracer: a lasting
subscription is owned by the Rust side, and the tracer holds its subscriptions, which hold the document.
A callback that referred to the tracer closed that loop through Rust, where Python's collector cannot see
it: every document the relay ever traced stayed in memory (+120 KB a 60 KB record, measured, whatever the
cache size). They reach the tracer through a weak reference; the ``RecordDoc`` owns it, and when that
goes, the tracer, its subscriptions and the document go too.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Traced", "Tracer"]

_EMPTY_UPDATE = b"\x00\x00"


@dataclass(slots=True)
class Traced:
    """What one remote update did to a document.

    ``new``: the part that was new to it (b"" if none); ``before``/``after``: its encoded state vectors
    around the apply; ``slots``/``sets``: keys of the slot map ``f`` and the set map ``s`` it set or
    deleted, and ``slot_values``/``set_values`` the values now under those of them still present (the
    maps' events carry them: no read needed); ``history``: the entries it inserted into the history array
    ``h``, ``history_deleted``: how many it deleted from it; ``held``: it builds on an update the
    document does not have, so it was kept out (``RecordDoc.apply``) and nothing else here is meaningful.
    """

    new: bytes = b""
    before: bytes = b"\x00"
    after: bytes = b"\x00"
    slots: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    slot_values: dict[str, Any] = field(default_factory=dict)
    set_values: dict[str, Any] = field(default_factory=dict)
    history: list[Any] = field(default_factory=list)
    history_deleted: int = 0
    held: bool = False


class Tracer:
    """Lasting subscriptions on one Yrs document and its roots ``f``, ``s`` and ``h``; ``arm()`` makes
    them record into a fresh ``Traced`` until ``disarm()``. Other transactions on the document (reads,
    local writes) find it disarmed and cost one call each."""

    __slots__ = ("__weakref__", "_current", "_subs")

    def __init__(self, ydoc: Any, slots: Any, sets: Any, history: Any) -> None:
        self._current: Traced | None = None
        me = weakref.ref(self)
        self._subs = [ydoc.observe(_weakly(me, Tracer._on_txn)), slots.observe(_weakly(me, Tracer._on_slots)),
                      sets.observe(_weakly(me, Tracer._on_sets)), history.observe(_weakly(me, Tracer._on_history))]

    def arm(self) -> Traced:
        t = self._current = Traced()
        return t

    def disarm(self) -> None:
        self._current = None

    def close(self) -> None:
        """Drop the subscriptions (the document is being replaced)."""
        self._current = None
        for sub in self._subs:
            sub.drop()
        self._subs.clear()

    def _on_txn(self, event: Any) -> None:
        t = self._current
        if t is None:
            return
        update = event.update
        if update != _EMPTY_UPDATE:
            t.new = update
        t.before = event.before_state
        t.after = event.after_state

    def _on_slots(self, event: Any) -> None:
        t = self._current
        if t is not None:
            _collect(event.keys, t.slots, t.slot_values)

    def _on_sets(self, event: Any) -> None:
        t = self._current
        if t is not None:
            _collect(event.keys, t.sets, t.set_values)

    def _on_history(self, event: Any) -> None:
        t = self._current
        if t is None:
            return
        for op in event.delta:
            t.history.extend(op.get("insert", ()))
            t.history_deleted += int(op.get("delete", 0))


def _weakly(ref: weakref.ReferenceType[Tracer], method: Callable[[Tracer, Any], None]) -> Callable[[Any], None]:
    """``method`` of the tracer ``ref`` points to, as a callback that does not keep the tracer alive."""
    def callback(event: Any) -> None:
        tracer = ref()
        if tracer is not None:
            method(tracer, event)
    return callback


def _collect(changes: dict[str, dict[str, Any]], keys: list[str], values: dict[str, Any]) -> None:
    """A Yrs map event's ``keys`` (key -> ``action`` and ``newValue``/``oldValue``) into the keys it
    changed and the values now under those still present."""
    for key, change in changes.items():
        keys.append(key)
        if "newValue" in change:
            values[key] = change["newValue"]
        else:
            values.pop(key, None)
