"""The lost-update oracle: judges each intended write from the simulator's own records. Strategy-blind.

It looks only at (1) the history of writes the simulated users made, each with the causal knowledge its
author had when making it (tracked by the simulator from the messages it delivered, never read from a
replica), (2) which writes their authors were told had failed (a rejected change they then discarded), and
(3) the final state of every device as plain data. It never calls strategy code. See docs/simulator.md for
the definitions; in short, a field write is

- ``kept``: its value is the field's value in the final state (record not deleted);
- ``surfaced``: its value is one of the candidates of an open conflict on that field;
- ``superseded``: a later write of the same field, or a delete of the record, was made by someone who had
  seen it (causally after it: they overwrote it knowingly);
- ``lost`` otherwise; ``silent`` if lost and its author was never told.

*Independent-field* writes are those that met a concurrent write (neither author had seen the other) of
another field of the same record, and no concurrent write of their own field nor a concurrent delete: a
strategy that merges field by field has no reason to lose any of them.

A delete is kept when the record ends deleted, surfaced when a conflict on ``deleted`` shows it, and lost
(a *resurrection*) otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["DELETED", "FinalRecord", "OracleReport", "Verdict", "Write", "evaluate", "saw"]

DELETED = "deleted"
Verdict = Literal["kept", "surfaced", "superseded", "lost"]


@dataclass(frozen=True)
class Write:
    """One intended write of one field (or ``deleted``) by a simulated user.

    ``seq`` numbers the writes of one device from 1; ``seen`` is its author's causal knowledge when it
    wrote: for each device, how many of that device's writes had reached it (its own earlier writes
    included).
    """

    id: int
    device: str
    seq: int
    record: str
    field: str
    value: Any
    seen: Mapping[str, int]
    time: int = 0


@dataclass(frozen=True)
class FinalRecord:
    """A record as one device shows it at the end: ``conflicts`` maps a field to its candidate values."""

    deleted: bool
    fields: Mapping[str, Any]
    conflicts: Mapping[str, Sequence[Any]] = field(default_factory=dict)


def saw(later: Write, earlier: Write) -> bool:
    """True when ``later``'s author had seen ``earlier`` when writing (causally after it)."""
    return later.seen.get(earlier.device, 0) >= earlier.seq


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
    if rec is not None and not rec.deleted and w.field in rec.fields and rec.fields[w.field] == w.value:
        return "kept"
    if rec is not None and any(v == w.value for v in rec.conflicts.get(w.field, ())):
        return "surfaced"
    return "superseded" if superseded else "lost"


_RANK: dict[Verdict, int] = {"lost": 0, "superseded": 1, "surfaced": 2, "kept": 3}


def evaluate(writes: Iterable[Write], finals: Sequence[Mapping[str, FinalRecord]],
             notified: Iterable[int] = ()) -> OracleReport:
    """Judge every write against every device's final state; a write lost on any device is lost.

    ``notified`` holds the ids of writes whose authors were told they failed (rejected, then discarded).
    """
    ws = list(writes)
    told = set(notified)
    by_record: dict[str, list[Write]] = defaultdict(list)
    for w in ws:
        by_record[w.record].append(w)
    verdicts: dict[int, Verdict] = {}
    report = OracleReport(verdicts, set())
    for w in ws:
        superseded = any(o is not w and (o.field == w.field or o.field == DELETED) and saw(o, w)
                         for o in by_record[w.record])
        worst: Verdict = "kept"
        for final in finals:
            v = _verdict_on(w, final.get(w.record), superseded)
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
    for w in ws:
        if w.field == DELETED:
            continue
        concurrent = [o for o in by_record[w.record] if o.device != w.device and not saw(o, w) and not saw(w, o)]
        if any(o.field not in (DELETED, w.field) for o in concurrent) and \
                not any(o.field in (DELETED, w.field) for o in concurrent):
            report.independent_writes += 1
            if verdicts[w.id] == "lost":
                report.independent_lost += 1
    report.conflicts_open = max((sum(len(r.conflicts) for r in final.values()) for final in finals), default=0)
    return report
