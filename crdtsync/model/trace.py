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
cache size). They share only a small list with the tracer (the ``Traced`` being filled, none between
changes, and a flag); the ``RecordDoc`` owns the tracer, and when that goes, the tracer, its subscriptions
and the document go too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Traced", "Tracer", "any_strings", "client_start", "history_from_update", "scan_update"]

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
    #: whether the history array ``h`` changed (set by a tracer armed with ``exact=False``, which leaves
    #: ``history`` and ``history_deleted`` to ``history_from_update``)
    history_changed: bool = False


class Tracer:
    """Lasting subscriptions on one Yrs document and its roots ``f``, ``s`` and ``h``; ``arm()`` makes
    them record into a fresh ``Traced`` until ``disarm()``. Other transactions on the document (reads,
    local writes) find it disarmed and cost one call each."""

    __slots__ = ("_box", "_subs", "history")

    def __init__(self, ydoc: Any, slots: Any, sets: Any, history: Any) -> None:
        # what the callbacks share with the tracer, and all they hold: the ``Traced`` being filled (None:
        # disarmed) and whether the history's entries are read from its delta (see the module docstring)
        box: list[Any] = [None, True]
        self._box = box
        self.history = history  # the Yrs handle of ``h`` (its length, for ``history_from_update``)
        self._subs = [ydoc.observe(_on_txn(box)), slots.observe(_on_map(box, True)),
                      sets.observe(_on_map(box, False)), history.observe(_on_history(box))]

    def arm(self, *, exact: bool = True) -> Traced:
        """Record into a fresh ``Traced``. ``exact=False``: of the history, only whether it changed (the
        entries a change inserted are then read off its update: ``history_from_update``)."""
        t = Traced()
        self._box[0], self._box[1] = t, exact
        return t

    def disarm(self) -> None:
        self._box[0] = None

    def close(self) -> None:
        """Drop the subscriptions (the document is being replaced)."""
        self._box[0] = None
        for sub in self._subs:
            sub.drop()
        self._subs.clear()


def _on_txn(box: list[Any]) -> Callable[[Any], None]:
    def callback(event: Any) -> None:
        t = box[0]
        if t is None:
            return
        update = event.update
        if update != _EMPTY_UPDATE:
            t.new = update
        t.before = event.before_state
        t.after = event.after_state
    return callback


def _on_map(box: list[Any], slots: bool) -> Callable[[Any], None]:
    def callback(event: Any) -> None:
        t = box[0]
        if t is not None:
            if slots:
                _collect(event.keys, t.slots, t.slot_values)
            else:
                _collect(event.keys, t.sets, t.set_values)
    return callback


def _on_history(box: list[Any]) -> Callable[[Any], None]:
    def callback(event: Any) -> None:
        t = box[0]
        if t is None:
            return
        t.history_changed = True
        if not box[1]:
            return
        # (Yrs makes the delta by walking every item of the array: 7-10 ns each, 0.15-0.2 ms a change at
        # 20,000 history entries, half of what the relay spent on a change to a record written that often)
        for op in event.delta:
            t.history.extend(op.get("insert", ()))
            t.history_deleted += int(op.get("delete", 0))
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


def history_from_update(traced: Traced, grown: int, values: list[str]) -> bool:
    """Fill ``traced.history`` (the entries inserted into the history array) from ``values``, the update's
    ``any_strings``, without the history's delta (which walks the whole array); return False, leaving it
    empty, when that cannot be told for sure (then trace the update exactly). ``grown``: how much the
    array's length changed. The update holds the values of the part new to the document and those of any
    items the document had already; those would be values left over beyond the new entries, so the count
    below fails and nothing wrong is filled in.

    Sure only for an update whose content is all JSON strings in ``Any`` items (every change of a register,
    counter or set field, and every delete; a text edit is not, its characters are strings of another
    kind): each such value went into a slot or set entry (the map events report the final one per key) or
    into the history, or somewhere else (a text, a map key written twice). The values left once those of
    the map events are taken away are then the history's new entries plus those others, and the history
    grew by its new entries minus the entries deleted from it: so the values left number exactly ``grown``
    only when there are no others and no entry was deleted, and then they are the new entries.
    """
    left: dict[str, int] = {}
    for v in values:
        left[v] = left.get(v, 0) + 1
    for mapped in (traced.slot_values, traced.set_values):
        for v in mapped.values():
            n = left.get(v, 0) if isinstance(v, str) else 0
            if n == 0:
                return False
            left[v] = n - 1
    entries = [v for v, n in left.items() for _ in range(n)]
    if len(entries) != grown:
        return False
    traced.history = entries
    traced.history_deleted = 0
    return True


_MAPS = ("f", "s")  # the record's maps: every item under a key


#: one varuint, and two, matched from a position (``.match(data, pos).end()``): a varuint skipped in one C call,
#: not a Python loop over its bytes (a Yjs client id takes five); no match when the data ends inside it
_SKIP1 = re.compile(rb"[\x80-\xff]*[\x00-\x7f]").match
_SKIP2 = re.compile(rb"[\x80-\xff]*[\x00-\x7f][\x80-\xff]*[\x00-\x7f]").match


def any_strings(update: bytes) -> list[str] | None:
    """The values of every ``Any`` item of a Yjs v1 update, in order, if all of them are strings and the
    update holds no content of another kind but deleted items (None otherwise, or for one it cannot read)."""
    return scan_update(update)[1]


def scan_update(update: bytes) -> tuple[str | None, list[str] | None, list[str] | None,
                                       list[tuple[int, int]] | None]:
    """One pass over a Yjs v1 update, for what the relay reads off each change before applying it:

    - what in it a record's document cannot hold, whatever it says (None: nothing found, or an update this
      cannot read, which Yrs then refuses or not). A device writes strings under keys of the maps ``f`` and
      ``s``, strings into the history ``h`` and characters into its texts, nothing else: an item without a
      key in a map, under a key in the history or a text, a nested shared type, or content of another kind
      (binary, embeds, formats, subdocuments) would be stored and sent to every reader while no API shows it
      (room for covert data; the relay checks what the events report). Items placed by origin take their
      parent and key from it: only those that name their parent are checked for keys;
    - ``any_strings``;
    - the root types its items name besides ``f``, ``s`` and ``h``. Only items that name their parent name a
      root; the others take their parent from an item already in the document (or in the update), so a
      document that held only our roots holds, after the update, only those and the ones named here;
    - where each client's items start in it: the positions of its client id and after its first clock
      (``client_start`` reads them).

    The last two are None when it cannot be read to its end, and the strings when a text's characters are
    in it. Varuints of one byte (counts and lengths, nearly always) are read inline, longer ones by
    ``_varuint``, and those only skipped (origins) by one regular expression match: 24k instructions a
    change, against 36k skipping them byte by byte in Python."""
    data = update
    out: list[str] | None = []
    roots: list[str] = []
    heads: list[tuple[int, int]] = []
    size = len(data)
    try:
        pos = 0
        clients = data[pos]
        pos += 1
        if clients & 0x80:
            clients, pos = _varuint(data, pos - 1)
        for _ in range(clients):
            structs = data[pos]
            pos += 1
            if structs & 0x80:
                structs, pos = _varuint(data, pos - 1)
            m = _SKIP2(data, pos)  # client, clock
            if m is None:
                return None, None, None, None
            heads.append((pos, m.end()))
            pos = m.end()
            for _ in range(structs):
                info = data[pos]
                pos += 1
                kind = info & 0x1F
                if kind == 0 or kind == 10:  # GC, Skip: a length
                    m = _SKIP1(data, pos)
                    if m is None:
                        return None, None, None, None
                    pos = m.end()
                    continue
                if info & 0xC0:  # an origin (left, right or both): ids of two varuints each
                    if info & 0x80:
                        m = _SKIP2(data, pos)
                        if m is None:
                            return None, None, None, None
                        pos = m.end()
                    if info & 0x40:
                        m = _SKIP2(data, pos)
                        if m is None:
                            return None, None, None, None
                        pos = m.end()
                else:  # no origin: the parent, and the key in a map, are written out
                    if data[pos] != 1:
                        return "an item inside a nested shared type", None, None, None
                    pos += 1
                    n, pos = _varuint(data, pos)
                    root = data[pos:pos + n].decode("utf-8")
                    pos += n
                    keyed = bool(info & 0x20)
                    if keyed:
                        n, pos = _varuint(data, pos)
                        pos += n
                    if root in _MAPS:
                        if not keyed:
                            return f"an item without a key in the map {root!r}", None, None, None
                    else:
                        if keyed and (root == "h" or root.startswith("t:")):  # (other roots: ``check_roots``)
                            return f"an item under a key in {root!r}", None, None, None
                        if root != "h":
                            roots.append(root)
                if kind == 8:  # any: strings only
                    count = data[pos]
                    pos += 1
                    if count & 0x80:
                        count, pos = _varuint(data, pos - 1)
                    for _ in range(count):
                        if data[pos] != 119:
                            return "a value that is not a string", None, None, None
                        n = data[pos + 1]
                        pos += 2
                        if n & 0x80:
                            n, pos = _varuint(data, pos - 1)
                        if out is not None:
                            out.append(data[pos:pos + n].decode("utf-8"))
                        pos += n
                elif kind == 1:  # deleted: a length
                    m = _SKIP1(data, pos)
                    if m is None:
                        return None, None, None, None
                    pos = m.end()
                elif kind == 4:  # characters of a text
                    n, pos = _varuint(data, pos)
                    pos += n
                    out = None
                else:
                    return f"content of kind {kind} (only strings and text)", None, None, None
                if pos > size:
                    return None, None, None, None
        return None, out, roots, heads
    except (ValueError, IndexError, UnicodeDecodeError):
        return None, None, None, None


def client_start(update: bytes, pos: int) -> tuple[int, int]:
    """The Yjs client and first clock of a client's items in a v1 update, its id at ``pos`` (a head from
    ``scan_update``)."""
    client, pos = _varuint(update, pos)
    return client, _varuint(update, pos)[0]


def _varuint(data: bytes, pos: int) -> tuple[int, int]:
    """The varuint at ``pos`` and the position after it."""
    n = shift = 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7
        if shift > 70:
            raise ValueError("overlong varuint")
