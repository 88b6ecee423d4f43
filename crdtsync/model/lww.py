"""The ``lww-field`` strategy: every field takes the value written at the latest *wall-clock* time. No I/O.

The document layout is the crdt one (per-writer slots, see ``document.py``), with one more number per slot:
``w``, the writer's own wall clock (ms) when it wrote, as its device reported it. The winner of a field is
the slot with the latest ``(w, device, writer)``; nothing is ever surfaced as a conflict. This is the
classic "last write wins by timestamp" found in many sync engines, and it has their flaws on purpose:

- a device whose clock runs ahead wins every clash it takes part in, even against edits made later by
  someone who had seen its value (a device whose clock runs behind loses them);
- the losing value of a same-field clash is dropped without a trace;
- ``deleted`` is a field like any other: the latest delete/create stamp decides, so an edit made
  concurrently with a delete stays hidden under it, silently.

Text, counter and set fields merge as in ``crdt`` (they are CRDTs in their own right); only plain
register fields and the deleted flag are last-writer-wins.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from ..clock import hlc_wall_ms
from ..schema import Collection
from .record import RecordDoc
from .slots import DELETED, SEP, Slot
from .state import Candidate, RecordState, SetEntry, _decode, _set_values, clamp64, hidden_fields, share

__all__ = ["LwwFieldDoc", "compute_lww_state", "lww_winner"]


def lww_winner(slots: Iterable[tuple[Slot, int]]) -> Slot | None:
    """The slot with the latest wall-clock stamp; ties broken by device id, then writer tag."""
    best: tuple[int, str, str] | None = None
    out: Slot | None = None
    for s, wall in slots:
        key = (wall, s.device, s.writer)
        if best is None or key > best:
            best, out = key, s
    return out


def compute_lww_state(coll: Collection, record_id: str, slots: Iterable[tuple[Slot, int]],
                      sets: Iterable[SetEntry], texts: Mapping[str, str]) -> RecordState:
    """A record's state under ``lww-field``: ``slots`` pairs each slot with its writer's wall stamp."""
    by_field: dict[str, list[tuple[Slot, int]]] = defaultdict(list)
    vector: dict[str, int] = {}
    for s, wall in slots:
        by_field[s.field].append((s, wall))
        if s.t > vector.get(s.writer, 0):
            vector[s.writer] = s.t
    values: dict[str, Any] = {}
    changed_by: dict[str, Candidate] = {}
    for name, f in coll.fields.items():
        fs = by_field.get(name, [])
        w = lww_winner(fs)
        if w is not None:
            changed_by[name] = Candidate(None, w.device, w.user, w.t)
        if f.merge == "register":
            values[name] = None if w is None else _decode(coll, name, w.value)
        elif f.merge == "counter":
            values[name] = clamp64(sum(share(s.value) for s, _ in fs))  # (as crdt's)
        elif f.merge == "text":
            values[name] = texts.get(name, "")
        else:
            values[name] = frozenset()
    values.update(_set_values(coll, sets))
    d = lww_winner(by_field.get(DELETED, []))
    deleted = d is not None and d.value is True
    return RecordState(coll.name, record_id, values, deleted, (), vector, bool(vector),
                       max(vector.values(), default=0), changed_by, hidden_fields(coll, by_field))


class LwwFieldDoc(RecordDoc):
    """A record under ``lww-field``: the crdt layout plus each writer's wall clock in its slots.

    ``wall`` is the device's own wall clock (ms since the epoch), skew and all; without it the wall part
    of the HLC time is used, which is fairer than what this strategy emulates.
    """

    _advances = False  # the winner is the latest wall-clock stamp, not the latest write seen

    def __init__(self, collection: Collection, record_id: str, *, writer: str, device: str, user: str,
                 client_id: int, updates: Iterable[bytes] = (), held: Iterable[bytes] = (),
                 wall: Callable[[], int] | None = None) -> None:
        self._wall = wall
        super().__init__(collection, record_id, writer=writer, device=device, user=user, client_id=client_id,
                         updates=updates, held=held)

    def _put_slot(self, name: str, value: Any, t: int, seen: Mapping[str, int]) -> None:
        key = f"{name}{SEP}{self.writer}"
        wall = self._wall() if self._wall is not None else hlc_wall_ms(t)
        raw = orjson.dumps({"v": value, "t": t, "d": self.device, "u": self.user, "c": seen, "w": wall}).decode()
        self._slots[key] = raw
        self._wrote_slot(key, raw, Slot(name, self.writer, value, t, self.device, self.user, seen))

    def walls(self) -> dict[str, int]:
        """Each slot's wall-clock stamp, by slot key (the HLC wall part for slots written without one)."""
        out: dict[str, int] = {}
        for key, raw in self.raw_slots().items():
            try:
                w = orjson.loads(raw).get("w")
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                w = None
            if not isinstance(w, int):
                s = self.slots().get(key)
                w = hlc_wall_ms(s.t) if s is not None else 0
            out[key] = w
        return out

    def state(self) -> RecordState:
        if self._state is None:
            walls = self.walls()
            pairs = [(s, walls.get(k, hlc_wall_ms(s.t))) for k, s in self.slots().items()]
            self._state = compute_lww_state(self.collection, self.id, pairs, self.set_entries(), self.texts())
        return self._state
