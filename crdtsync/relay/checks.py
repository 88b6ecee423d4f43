"""What the relay checks in a device's change beyond the schema: that everything it changed is the
device's own (``check_own``: slots, set entries and history entries under its writer tag, naming itself
and its token's user; the history only grows), and the limits a merge can break (``refuse_over_limits``).
``apply_observed`` applies a change to a document ``apply_traced`` cannot trace, observing what it changed.
A refused change raises ``Refused`` (``Waits``: held for the device to send again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from pycrdt import Array, Map

from ..clock import MAX_AHEAD_MS, MAX_TIME, hlc_wall_ms
from ..model.document import parse_set, parse_slot
from ..model.record import RecordDoc
from ..model.slots import SEP, Slot, is_own_writer, writer_device
from ..model.state import beyond64
from ..model.trace import Traced
from ..schema import Collection, Counter, Field, Text
from ..schema import Set as SetField
from .drafts import Refusal

__all__ = ["MAX_AHEAD_MS", "Refused", "Waits", "apply_observed", "check_claims", "check_own", "check_roots",
           "is_own_writer", "merge_limits", "refuse", "refuse_over_limits", "waits_for",
           "writer_device"]




class Refused(Exception):
    """A change the relay refuses: ``code`` (``invalid``, ``forbidden``, ``gone``) and a reason for the device."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason


class Waits(Refused):
    """Not refused: held, not stored, for the device to send again (see ``RelayLog.stage``). Its reason
    reaches the device (ACK's ``waits``) and its user: make it with ``waits_for``."""


def waits_for(what: str, devices: Iterable[str], *, it: str = "them") -> Waits:
    """A change held because ``what`` (it builds on, or claims to have seen, writes the relay lacks): the
    reason names the ``devices`` whose writes they are, when the relay can tell (none: it cannot), and says
    what the user can do about it."""
    names = sorted(set(devices))
    one = len(names) <= 1
    if names:
        who = ", ".join(map(repr, names))
        whose = f" of device {who}" if one else f" of devices {who}"
    else:
        whose, who = "", f"the device that made {it}"
    has, syncs = ("has", "syncs") if one else ("have", "sync")
    return Waits("held", f"{what}{whose} that the relay does not have yet (this device got {it} directly, as by "
                         f"import_updates, and {who} {has} not synced {it}): sent again at each sync, it goes in "
                         f"once {who} {syncs}; or discard_record() gives up this device's changes of the record")


def merge_limits(coll: Collection) -> list[tuple[str, Field]]:
    """The fields of ``coll`` whose limits a merge can break (see ``refuse_over_limits``)."""
    return [(n, f) for n, f in coll.fields.items()
            if (isinstance(f, Text) and f.max_length is not None) or (isinstance(f, SetField) and f.max_items)
            or isinstance(f, Counter)]


def _excess(doc: RecordDoc, name: str, f: Field) -> tuple[int, int]:
    """How far a field is beyond its merge limit (0: within), and its size (a counter: its sum)."""
    if isinstance(f, Counter):
        total = doc.counter_sum(name)  # (the state shows a sum beyond 64 bits clamped)
        return beyond64(total), total
    value = doc.state().fields.get(name)
    if isinstance(f, Text) and isinstance(value, str) and f.max_length is not None:
        return max(0, len(value) - f.max_length), len(value)
    if isinstance(f, SetField) and isinstance(value, frozenset) and f.max_items is not None:
        return max(0, len(value) - f.max_items), len(value)
    return 0, 0


def refuse_over_limits(doc: RecordDoc, limits: list[tuple[str, Field]], touched: Iterable[str],
                       was: Callable[[], RecordDoc]) -> None:
    """Limits that hold per write but not per merge: a text's ``max_length``, a set's ``max_items``, and a
    counter's 64 bits. Two devices that each add 600 characters offline to a 1000-character note both wrote
    valid values; the second to arrive makes the merged note too long, and is refused as ``invalid`` (the
    device keeps it as an error, to ``fix()`` or discard). Two increments of ``2**62`` each fit, their sum
    with a third does not: no device could store or show it. Only collections with such fields pay.

    Only a change that takes a field further beyond its limit is refused: a field beyond it after the
    change is compared with the record as it was (``was`` rebuilds it: only then). So a record already
    over a limit (lowered after it was written) stays writable, in its other fields and in that one, as
    long as the change does not make it longer (one shortening the note, a rename, a delete), and a
    counter summed beyond 64 bits by a relay from before this check may come back towards the range. A
    counter is summed only when the change wrote one of its slots (``touched``: the slot keys it set)."""
    counters: set[str] | None = None
    before: RecordDoc | None = None
    for name, f in limits:
        if isinstance(f, Counter):
            if counters is None:
                counters = {key.partition(SEP)[0] for key in touched}
            if name not in counters:
                continue
        excess, size = _excess(doc, name, f)
        if excess == 0:
            continue
        if before is None:
            before = was()
        if excess <= _excess(before, name, f)[0]:
            continue
        where = f"{doc.collection.name}/{doc.id} {name}: merged with the relay's copy it"
        if isinstance(f, Text):
            long = "1 character" if size == 1 else f"{size} characters"
            raise Refused("invalid", f"{where} is {long} long, more than max_length={f.max_length}")
        if isinstance(f, SetField):
            raise Refused("invalid", f"{where} holds {size} items, more than max_items={f.max_items}")
        raise Refused("invalid", f"{where} would add up to {size}, which does not fit in 64 bits")


def refuse(refusal: Refusal | None) -> None:
    if refusal is not None:
        raise Refused(*refusal)


def apply_observed(doc: RecordDoc, update: bytes) -> tuple[Traced, bool]:
    """``doc.apply(update)`` under observers made for it, for a document ``apply_traced`` cannot trace:
    what it changed, as ``apply_traced`` reports it, and whether that is all of it (False when the
    document was rebuilt meanwhile, an update held back, see ``RecordDoc.apply``: what happened to the
    new document was not observed)."""
    traced = Traced(before=doc.state_vector())
    ydoc = doc.doc
    slots, sets, history = doc.roots()

    def on_history(ev: Any) -> None:
        for op in ev.delta:
            traced.history.extend(op.get("insert", ()))
            traced.history_deleted += int(op.get("delete", 0))

    subs = [_subscribe(slots, lambda ev: traced.slots.extend(ev.keys)),
            _subscribe(sets, lambda ev: traced.sets.extend(ev.keys)), _subscribe(history, on_history)]
    try:
        traced.new = doc.apply(update)
    finally:
        for sub in subs:
            sub.drop()
    traced.held = bool(doc.held)
    traced.after = doc.state_vector()
    return traced, doc.doc is ydoc


def _subscribe(shared: Map[Any] | Array[Any], callback: Any) -> Any:
    """Observe a root type's own Yrs events (``keys`` of a map event, ``delta`` of an array event, both
    plain Python values for our string entries); drop the returned subscription to stop."""
    integrated = getattr(shared, "integrated", None)
    if integrated is None or not hasattr(integrated, "observe"):  # another pycrdt: the public way
        sub = shared.observe(callback)
        return _PublicSub(shared, sub)
    return integrated.observe(callback)


class _PublicSub:
    def __init__(self, shared: Map[Any] | Array[Any], sub: Any) -> None:
        self.shared, self.sub = shared, sub

    def drop(self) -> None:
        self.shared.unobserve(self.sub)


def check_own(doc: RecordDoc, traced: Traced, device: str, user: str | None,
               read: Mapping[str, Slot] | None = None, latest: int = MAX_TIME) -> None:
    """Anti-impersonation: everything the update changed must be the device's own.

    Slot keys are ``field SEP writer`` and set keys ``field SEP element SEP writer``; a slot also names
    its device ``d`` and user ``u``, and so does each history entry. A device may write only under its own
    writer tag (``device`` or ``device#N``), name only itself and its token's user (``user``; None when the
    relay runs without tokens and cannot know users), and only append to the history, with entries stamped
    no later than ``latest``. Text characters carry no author, so they cannot be checked (see
    docs/sync.md). ``read``: the changed slots, parsed and checked (``RecordDoc.check_keys``); None to
    read them here.
    """
    raw_slots = doc.raw_slots() if read is None and traced.slots else {}
    for key in traced.slots:
        writer = key.rpartition(SEP)[2]
        if not is_own_writer(writer, device):
            raise Refused("forbidden", f"writes the slot of writer {writer!r} ({key.partition(SEP)[0]}), "
                                        "not its own")
        if read is None:
            raw = raw_slots.get(key)
            if raw is not None:
                _check_author(raw, device, user, "a slot")
            continue
        slot = read.get(key)
        if slot is not None:
            if slot.device != device:
                raise Refused("forbidden", f"a slot claims device {slot.device!r}, not {device!r}")
            if user is not None and slot.user != user:
                raise Refused("forbidden", f"a slot claims user {slot.user!r}, but the token is {user!r}'s")
    for key in traced.sets:
        writer = key.rpartition(SEP)[2]
        if not is_own_writer(writer, device):
            raise Refused("forbidden", f"writes the set entry of writer {writer!r}, not its own")
    if traced.history_deleted:
        raise Refused("forbidden", "deletes history entries: the history is append-only")
    for raw in traced.history:
        _check_author(raw, device, user, "a history entry", latest)


def _check_author(raw: Any, device: str, user: str | None, what: str, latest: int | None = None) -> None:
    try:
        p = orjson.loads(raw) if isinstance(raw, str) else None
    except orjson.JSONDecodeError:
        p = None
    if not isinstance(p, dict):
        raise Refused("invalid", f"{what} is not a JSON object")
    if p.get("d") != device:
        raise Refused("forbidden", f"{what} claims device {p.get('d')!r}, not {device!r}")
    if user is not None and p.get("u") != user:
        raise Refused("forbidden", f"{what} claims user {p.get('u')!r}, but the token is {user!r}'s")
    if latest is not None:
        t = p.get("t")
        if t.__class__ is not int or not 0 < t <= latest:
            raise Refused("invalid", f"{what} is stamped {_when(t) if t.__class__ is int else repr(t)}, not a time "
                                     f"up to {_when(latest)} ({MAX_AHEAD_MS // 86_400_000} days ahead of the "
                                     "relay's clock): the device's clock is wrong")


def check_claims(doc: RecordDoc, traced: Traced, read: Mapping[str, Slot] | None, latest: int,
                 known: dict[str, int] | None) -> dict[str, int] | None:
    """Check what a change says of time and of what its author had seen, against the record the relay holds
    (after the change): a device can only stamp what it writes, so these are all it could forge.

    - Its slots must be stamped no later than ``latest`` (the relay's clock plus ``MAX_AHEAD_MS``), else
      ``invalid``: a time far ahead moves every device's clock there for good (``check_own`` checks the
      history entries' times with their authors).
    - A slot's ``c`` (the writes its author had seen) and a set entry's ``r`` (the adds it had seen
      removed) must name only writes the record holds: claiming to have seen a later write of another
      device would let this one silently override that write when it comes. A claim beyond them is held
      (``Waits``), as a change building on updates the relay lacks: a device may have got another's
      write directly (``import_updates``) before that device synced it.

    ``known``: the latest slot time of each writer of the record as the relay last read it (None: not
    read yet); claims within it need no reading of the record (its state costs more than the rest of the
    relay's checks). Returns it as read, with this change's slots in it.
    """
    slots = _changed_slots(doc, traced, read)
    for key, s in slots.items():
        if s.t > latest:
            raise Refused("invalid", f"slot {key.partition(SEP)[0]!r} is stamped {_when(s.t)}, more than "
                                     f"{MAX_AHEAD_MS // 86_400_000} days ahead of the relay's clock: the "
                                     "device's clock is wrong")
    fresh = False
    for key, s in slots.items():
        for w, n in s.seen.items():
            if w == s.writer or (known is not None and n <= known.get(w, 0)):
                continue  # (its own writes are ordered by its times, not by what it says it saw)
            if known is None or not fresh:  # the record's writers as they stand (it only added its own slots)
                known, fresh = dict(doc.state().vector), True
            if n > known.get(w, 0):
                raise waits_for(f"field {key.partition(SEP)[0]!r} was written after seeing a write",
                                (writer_device(w),), it="it")
    # (an entry as devices write it, that removes nothing, ends so: one that says otherwise is parsed)
    claiming = {k: v for k, v in traced.set_values.items() if not (isinstance(v, str) and v.endswith('"r":{}}'))}
    if claiming:
        entries = [parse_set(k, v) for k, v in claiming.items()]
        others = {f"{e.field}{SEP}{e.element}{SEP}{w}" for e in entries for w in e.removed if w != e.writer}
        adds = {k: parse_set(k, v).adds for k, v in doc.get_sets(others).items()} if others else {}
        for e in entries:
            for w, n in e.removed.items():
                have = e.adds if w == e.writer else adds.get(f"{e.field}{SEP}{e.element}{SEP}{w}", 0)
                if n > have:
                    raise waits_for(f"an element of {e.field!r} was removed after seeing adds", (writer_device(w),))
    if known is not None:
        for s in slots.values():
            if s.t > known.get(s.writer, 0):
                known[s.writer] = s.t
    return known


def _changed_slots(doc: RecordDoc, traced: Traced, read: Mapping[str, Slot] | None) -> dict[str, Slot]:
    """The slots the change set, parsed (``read``, or read here); the schema check refused bad ones."""
    if read is not None:
        return dict(read)
    raw = doc.raw_slots() if traced.slots else {}
    out = {}
    for key in traced.slots:
        value = raw.get(key)
        if value is not None:
            out[key] = parse_slot(key, value)
    return out


def _when(t: int) -> str:
    return datetime.fromtimestamp(hlc_wall_ms(t) / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC") \
        if 0 < t < MAX_TIME else str(t)


_ROOTS: dict[int, tuple[Collection, frozenset[str]]] = {}


def check_roots(doc: RecordDoc, named: Iterable[str] | None = None) -> None:
    """Refuse (``invalid``) a record holding root types besides ours: the slot map ``f``, the set map
    ``s``, the history ``h`` and one text per text field (``t:<name>``). Anything else in an update is
    stored and sent to every reader while no API shows it: room for covert data, up to the record limit.

    ``named``: the roots the change just applied named besides ``f``, ``s`` and ``h`` (``scan_update``, for
    an update read to its end and applied alone): only a root an update names can be new, so only those
    are checked (listing the document's roots cost a transaction). None: every root of the document."""
    coll = doc.collection
    hit = _ROOTS.get(id(coll))
    if hit is None or hit[0] is not coll:
        if len(_ROOTS) >= 1024:
            _ROOTS.clear()
        names = frozenset({"f", "s", "h"} | {f"t:{n}" for n, f in coll.fields.items() if f.merge == "text"})
        hit = _ROOTS[id(coll)] = (coll, names)
    extra = [n for n in (doc.root_names() if named is None else named) if n not in hit[1]]
    if extra:
        raise Refused("invalid", f"writes outside the record's fields: root types {sorted(extra)[:3]!r}")
