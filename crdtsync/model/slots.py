"""The per-writer slots a record is made of, and how a field's value and conflicts follow from them.

Pure functions, no pycrdt and no I/O, so the merge rules can be read (and tested) on their own.

Each device writes only its own slot per field: ``slot key = field + "\\x1f" + writer``. A slot holds the
encoded value, the HLC time ``t``, the device ``d`` and user ``u`` that wrote it, and ``c``: the record's
version vector (latest time per writer) the writer had seen when it wrote. Yjs therefore never has to pick
between two values; crdtsync does:

- slot A is *dominated* by slot B when B had seen A (``B.c[A.writer] >= A.t``): B overwrote A knowingly;
- the *frontier* of a field is its slots that no other slot dominates; these are the live values;
- the *winner* is the frontier slot with the latest ``(t, device, writer)``, the same on every device;
- the other frontier slots are *surfaced conflicts*: concurrent values nobody has seen and overwritten.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DELETED", "SEP", "Slot", "dominated", "frontier", "is_own_writer", "mutually_concurrent", "winner",
           "writer_device"]

SEP = "\x1f"
DELETED = "@deleted"


@dataclass(slots=True)
class Slot:
    """One writer's latest write to one field of one record. Treat it as immutable: a record's caches
    share slots between the states they compute (not frozen only because a frozen dataclass costs five
    times as much to make, and a merge makes one per slot it reads)."""

    field: str
    writer: str
    value: Any  # the encoded (JSON) value; None for text/set markers
    t: int
    device: str
    user: str
    seen: Mapping[str, int]

    @property
    def order(self) -> tuple[int, str, str]:
        return (self.t, self.device, self.writer)

    def saw(self, other: Slot) -> bool:
        """True when this write was made by someone who had seen ``other``."""
        if other.writer == self.writer:
            return self.t >= other.t
        return self.seen.get(other.writer, 0) >= other.t


def dominated(slot: Slot, others: Iterable[Slot]) -> bool:
    """True when some other slot was written by someone who had seen ``slot``."""
    return any(o is not slot and o.saw(slot) for o in others)


def frontier(slots: Iterable[Slot]) -> list[Slot]:
    """The slots of one field that no other slot of it has seen: the values still alive.

    ``dominated`` for each slot, written out: this is the inner loop of every merge (a field written by
    five devices costs twenty ``saw`` checks), and the calls were most of its cost.
    """
    ss = list(slots)
    if len(ss) < 2:
        return ss
    out = []
    for s in ss:
        w, t = s.writer, s.t
        for o in ss:
            if o is not s and (o.t >= t if o.writer == w else o.seen.get(w, 0) >= t):
                break
        else:
            out.append(s)
    return out


def winner(slots: Iterable[Slot]) -> Slot | None:
    """The deterministic winner: latest HLC time, ties broken by device id, then writer tag."""
    best: Slot | None = None
    key: tuple[int, str, str] | None = None
    for s in slots:
        k = (s.t, s.device, s.writer)
        if key is None or k > key:
            best, key = s, k
    return best


def mutually_concurrent(a: Slot, b: Slot) -> bool:
    """Neither write had seen the other."""
    return not a.saw(b) and not b.saw(a)


def writer_device(writer: str) -> str:
    """The device a writer tag belongs to: ``device`` for ``device`` and for ``device#N`` (the tag a device
    writes a record under after a discard rebuilt it)."""
    head, sep, tail = writer.rpartition("#")
    return head if sep and head and tail.isdigit() else writer


def is_own_writer(writer: str, device: str) -> bool:
    """Whether ``device`` wrote under the tag ``writer``: its id, or ``device#N`` after it discarded changes
    of a record."""
    return writer == device or writer_device(writer) == device
