"""The lost-update oracle: judges each intended write from the simulator's own records. Strategy-blind.

It looks only at (1) the history of writes the simulated users made, each with the causal knowledge its
author had when making it (tracked by the simulator from the messages it delivered, never read from a
replica) and what the author's screen showed of the record just then, (2) which writes their authors were
told had failed (a rejected change they then discarded), and (3) the final state of every device as plain
data. It never calls strategy code. See docs/simulator.md for
the definitions; in short, a field write is

- ``kept``: its value is the field's value in the final state (record not deleted);
- ``surfaced``: its value is one of the candidates of an open conflict on that field;
- ``superseded``: a later write of the same field, or a delete of the record, overwrote it knowingly: it was
  made by its own author, or by someone who had seen it (causally after it) *and* had its value on screen
  when writing (as the field's value or as a candidate of a conflict on it). Under last-writer-wins a device
  can receive a write after it was already overwritten and never display it: overwriting what it does show
  is not overwriting that write knowingly;
- ``lost`` otherwise; ``silent`` if lost and its author was never told.

*Independent-field* writes are those that met a concurrent write (neither author had seen the other) of
another field of the same record, and no concurrent write of their own field nor a concurrent delete: a
strategy that merges field by field has no reason to lose any of them.

A delete is kept when the record ends deleted, surfaced when a conflict on ``deleted`` shows it, superseded
when a later write of ``deleted`` overwrote it knowingly (by its author, or by someone who had seen it and
was shown the record deleted), and lost (a *resurrection*) otherwise.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["DELETED", "FinalRecord", "OracleReport", "Verdict", "Write", "evaluate", "overwrote_knowingly",
           "same_value", "saw", "shows"]

DELETED = "deleted"
Verdict = Literal["kept", "surfaced", "superseded", "lost"]


@dataclass(frozen=True)
class Write:
    """One intended write of one field (or ``deleted``) by a simulated user.

    ``seq`` numbers the writes of one device from 1; ``seen`` is its author's causal knowledge when it
    wrote: for each device, how many of that device's writes had reached it (its own earlier writes
    included). A device's knowledge never shrinks: its later writes have seen at least what its earlier
    ones had. ``shown`` is what its author's screen showed of the record just before writing, as
    ``(field, value)`` pairs: each field's value, each candidate of a conflict on a field, and
    ``(deleted, True)`` if the record was shown deleted (not a set: ``("amount", 1)`` and the
    ``("amount", True)`` of an edit-vs-delete conflict are both shown, and ``==`` cannot tell them apart).
    ``None`` means not recorded: the author is then taken to have had on screen every write it had seen.
    """

    id: int
    device: str
    seq: int
    record: str
    field: str
    value: Any
    seen: Mapping[str, int]
    time: int = 0
    shown: Collection[tuple[str, Any]] | None = None


@dataclass(frozen=True)
class FinalRecord:
    """A record as one device shows it at the end: ``conflicts`` maps a field to its candidate values."""

    deleted: bool
    fields: Mapping[str, Any]
    conflicts: Mapping[str, Sequence[Any]] = field(default_factory=dict)


def same_value(a: Any, b: Any) -> bool:
    """``a == b`` with types told apart (``True`` is not ``1``, nor ``1.0``), in lists, tuples, sets and dicts
    too: a delete's conflict candidate ``True`` must not stand for a write of the int 1."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_value(v, b[k]) for k, v in a.items())
    if isinstance(a, (set, frozenset)):
        return {(type(x), x) for x in a} == {(type(y), y) for y in b}
    return bool(a == b)


def shows(shown: Iterable[tuple[str, Any]], field: str, value: Any) -> bool:
    """True when ``shown`` holds ``(field, value)`` (values compared with ``same_value``)."""
    return any(f == field and same_value(v, value) for f, v in shown)


def saw(later: Write, earlier: Write) -> bool:
    """True when ``later``'s author had seen ``earlier`` when writing (causally after it)."""
    return later.seen.get(earlier.device, 0) >= earlier.seq


def overwrote_knowingly(later: Write, earlier: Write) -> bool:
    """True when ``later`` (a write of ``earlier``'s field, or a delete of its record) was made by
    ``earlier``'s author after it, or by someone who had seen it and had its value on screen."""
    if later is earlier or later.record != earlier.record or later.field not in (earlier.field, DELETED):
        return False
    if not saw(later, earlier):
        return False
    return later.device == earlier.device or later.shown is None \
        or shows(later.shown, earlier.field, earlier.value)


@dataclass
class OracleReport:
    """The verdicts and the metrics that follow from them (see docs/simulator.md)."""

    verdicts: dict[int, Verdict]
    silent: set[int]
    field_writes: int = 0
    deletes: int = 0
    lost_updates: int = 0
    silently_lost: int = 0
    surfaced_writes: int = 0
    conflicts_open: int = 0
    independent_writes: int = 0
    independent_lost: int = 0
    delete_update_losses: int = 0
    resurrections: int = 0

    @property
    def independent_survival(self) -> float:
        return 1.0 if not self.independent_writes else 1 - self.independent_lost / self.independent_writes


def _verdict_on(w: Write, rec: FinalRecord | None, superseded: bool) -> Verdict:
    if w.field == DELETED:
        if rec is not None and rec.deleted:
            return "kept"
        if rec is not None and any(v is True for v in rec.conflicts.get(DELETED, ())):
            return "surfaced"
        return "superseded" if superseded else "lost"
    if rec is not None and not rec.deleted and w.field in rec.fields and same_value(rec.fields[w.field], w.value):
        return "kept"
    if rec is not None and any(same_value(v, w.value) for v in rec.conflicts.get(w.field, ())):
        return "surfaced"
    return "superseded" if superseded else "lost"


_RANK: dict[Verdict, int] = {"lost": 0, "superseded": 1, "surfaced": 2, "kept": 3}


class _Lane:
    """The writes of one device to one field (or ``deleted``) of one record, in the order it made them.

    Since a device's knowledge never shrinks, how much of another device's history these writes had seen
    never decreases along the lane: the writes that had seen a given write are a suffix of the lane, and
    the ones it had seen (by ``seq``) a prefix, so both are found by bisection.
    """

    __slots__ = ("seqs", "writes")

    def __init__(self, writes: list[Write]) -> None:
        self.writes = sorted(writes, key=lambda w: w.seq)
        self.seqs = [w.seq for w in self.writes]
        for a, b in zip(self.writes, self.writes[1:], strict=False):
            if any(b.seen.get(d, 0) < k for d, k in a.seen.items()):
                raise ValueError(f"write {b.id}: device {b.device} had seen less than at its write {a.id}")

    def first_that_saw(self, w: Write) -> int:
        """The index of the first write of the lane whose author had seen ``w`` (``len`` if none)."""
        return bisect_left(self.writes, w.seq, key=lambda x: x.seen.get(w.device, 0))


def _lanes(ws: Iterable[Write]) -> dict[tuple[str, str, str], _Lane]:
    """The writes by (record, device, field)."""
    groups: dict[tuple[str, str, str], list[Write]] = defaultdict(list)
    for w in ws:
        groups[(w.record, w.device, w.field)].append(w)
    return {k: _Lane(g) for k, g in groups.items()}


def _superseded(ws: list[Write], lanes: Mapping[tuple[str, str, str], _Lane]) -> set[int]:
    """The ids of the writes some other write overwrote knowingly (see ``overwrote_knowingly``)."""
    out: set[int] = set()
    # by its author: a later write of the field, or a delete, by the same device
    for w in ws:
        for f in (w.field, DELETED):
            lane = lanes.get((w.record, w.device, f))
            if lane is not None and lane.seqs[-1] > w.seq:
                out.add(w.id)
    # by someone who had it on screen: look the values they saw up among the writes of that field (the key
    # takes 1 and True for one value: ``overwrote_knowingly`` tells them apart)
    by_value: dict[tuple[str, str, Any], list[Write]] = defaultdict(list)
    for w in ws:
        by_value[(w.record, w.field, w.value)].append(w)
    for o in ws:
        for f, v in o.shown or ():
            if f == o.field or o.field == DELETED:
                out.update(w.id for w in by_value.get((o.record, f, v), ()) if overwrote_knowingly(o, w))
    # by someone whose screen was not recorded, who had seen it: in a lane, the last write had seen the most
    blind: dict[tuple[str, str], list[Write]] = defaultdict(list)
    for lane in _lanes(o for o in ws if o.shown is None).values():
        last = lane.writes[-1]
        blind[(last.record, last.field)].append(last)
    if blind:
        for w in ws:
            fields = (w.field,) if w.field == DELETED else (w.field, DELETED)
            if any(o is not w and saw(o, w) for f in fields for o in blind.get((w.record, f), ())):
                out.add(w.id)
    return out


def _independent(ws: list[Write], lanes: Mapping[tuple[str, str, str], _Lane]) -> set[int]:
    """The ids of the independent-field writes: they met a concurrent write of another field of their
    record and no concurrent write of their own field nor a concurrent delete."""
    by_record: dict[str, list[tuple[str, str, _Lane]]] = defaultdict(list)
    for (rec, dev, f), lane in lanes.items():
        by_record[rec].append((dev, f, lane))
    out: set[int] = set()
    for w in ws:
        if w.field == DELETED:
            continue
        other = same = False
        for dev, f, lane in by_record[w.record]:
            if dev == w.device:
                continue
            clash = f in (w.field, DELETED)
            if other and not clash:
                continue  # already known to have met another field
            # the lane's writes ``w`` had seen come first, the ones that had seen ``w`` last
            lo = bisect_right(lane.seqs, w.seen.get(dev, 0))
            if lo < lane.first_that_saw(w):
                if clash:
                    same = True
                    break
                other = True
        if other and not same:
            out.add(w.id)
    return out


def evaluate(writes: Iterable[Write], finals: Sequence[Mapping[str, FinalRecord]],
             notified: Iterable[int] = ()) -> OracleReport:
    """Judge every write against every device's final state; a write lost on any device is lost.

    ``notified`` holds the ids of writes whose authors were told they failed (rejected, then discarded).
    A device's knowledge must never shrink (``ValueError`` otherwise). The cost is about linear in the
    number of writes: per write, a bisection in each (device, field) lane of its record.
    """
    ws = list(writes)
    told = set(notified)
    lanes = _lanes(ws)
    superseded = _superseded(ws, lanes)
    verdicts: dict[int, Verdict] = {}
    report = OracleReport(verdicts, set())
    for w in ws:
        worst: Verdict = "kept"
        for final in finals:
            v = _verdict_on(w, final.get(w.record), w.id in superseded)
            if _RANK[v] < _RANK[worst]:
                worst = v
        verdicts[w.id] = worst
    for w in ws:
        v = verdicts[w.id]
        if w.field == DELETED:
            report.deletes += 1
            if v == "lost":
                report.resurrections += 1
            continue
        report.field_writes += 1
        if v == "surfaced":
            report.surfaced_writes += 1
        if v != "lost":
            continue
        report.lost_updates += 1
        if w.id not in told:
            report.silently_lost += 1
            report.silent.add(w.id)
        if any(final.get(w.record) is not None and final[w.record].deleted for final in finals):
            report.delete_update_losses += 1
    for i in _independent(ws, lanes):
        report.independent_writes += 1
        if verdicts[i] == "lost":
            report.independent_lost += 1
    report.conflicts_open = max((sum(len(r.conflicts) for r in final.values()) for final in finals), default=0)
    return report
