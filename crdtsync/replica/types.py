"""What the replica hands to apps: records, pending changes, change events."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..clock import hlc_wall_ms
from ..model.state import Candidate, Conflict

__all__ = ["ChangeEvent", "PendingChange", "Record", "RecordStatus"]

RecordStatus = Literal["pending", "syncing", "synced", "conflict", "error"]
ChangeStatus = Literal["pending", "syncing", "error"]


@dataclass(frozen=True)
class Record:
    """A record as the app sees it. ``status`` is its sync status; ``error`` the relay's reason, if any.

    ``version`` is what it was computed from: the record's version vector (the latest write time of each
    writer) as this replica held it, read-only. ``update(..., base=record)`` writes a form's values as
    edits made having seen only that (see docs/records.md, "Saving a form"). None for a record read from a
    row stored before rows kept it. It takes no part in equality.

    ``changed_by`` says, per field, who wrote the value it shows and when: a ``Candidate`` whose ``device``,
    ``user`` and ``time`` are the write's, and whose ``value`` is always None (the value is in ``fields``;
    a row does not keep it twice).
    """

    collection: str
    id: str
    fields: dict[str, Any]
    status: RecordStatus
    conflicts: tuple[Conflict, ...] = ()
    deleted: bool = False
    error: str | None = None
    updated: int = 0
    changed_by: dict[str, Candidate] = field(default_factory=dict)
    version: Mapping[str, int] | None = field(default=None, compare=False, repr=False)

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]


@dataclass(frozen=True)
class PendingChange:
    """One local change not yet acknowledged by the relay (a "draft"), oldest first in ``pending()``.

    ``id`` is the change's HLC time: unique on this device, and the order changes were made in.
    ``error`` holds ``(code, reason)`` when the relay rejected it (code: invalid, forbidden, gone).
    ``waiting`` says why the relay held it back at the last sync (neither stored nor rejected, it stays
    ``pending``): it builds on another device's writes the relay does not have yet; the reason names that
    device when the relay can tell, and says what to do (that device syncs, or ``discard_record()``).
    None when it was not held, or was held only behind an earlier change of its record.
    """

    id: int
    collection: str
    record: str
    op: str
    fields: dict[str, Any]
    status: ChangeStatus
    error: tuple[str, str] | None = None
    waiting: str | None = None

    @property
    def at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(hlc_wall_ms(self.id) / 1000, tz=dt.UTC)


@dataclass(frozen=True)
class ChangeEvent:
    """Something changed a record: a local write, a merge from a peer, or its sync status."""

    collection: str
    id: str
    origin: Literal["local", "remote", "status"]
    record: Record | None
