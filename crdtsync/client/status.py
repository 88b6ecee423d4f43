"""What a sync client tells the app: status events it can show ("Syncing 3 of 10", "Sync failed", "You're
offline", a conflict to look at, a change the relay rejected) and the result of a sync run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..model.state import Conflict

__all__ = ["StatusKind", "SyncResult", "SyncStatus"]

StatusKind = Literal["offline", "online", "started", "progress", "completed", "failed", "conflict", "error"]


@dataclass(frozen=True)
class SyncResult:
    """One finished sync run: changes uploaded (stored by the relay), rejected (now ``error``), held back
    (behind a rejected change of the same record), record updates downloaded, records with conflicts after
    it, and whether the relay sent a full resync of the scope."""

    collections: tuple[str, ...] | None
    uploaded: int = 0
    rejected: int = 0
    held: int = 0
    downloaded: int = 0
    conflicts: int = 0
    reset: bool = False
    cursor: int = 0


@dataclass(frozen=True)
class SyncStatus:
    """A status event. ``kind``:

    - ``offline``: no connection to the relay (``reason`` says why); ``online``: connected;
    - ``started``: a sync run began (``collections``: its sync units, None for all);
    - ``progress``: ``done`` of ``total`` in ``phase`` ``upload`` (changes) or ``download`` (log entries);
    - ``completed``: the run ended (``result``); ``failed``: it was cut short (``reason``), and is retried
      when the connection comes back;
    - ``conflict``: a record received in the sync has an open conflict (``collection``, ``record``,
      ``conflicts``);
    - ``error``: the relay rejected a change (``change_id``, ``code``: invalid, forbidden or gone,
      ``reason``); the change is kept with status ``error`` and holds the record's later changes.
    """

    kind: StatusKind
    reason: str | None = None
    phase: Literal["upload", "download"] | None = None
    done: int = 0
    total: int = 0
    collections: tuple[str, ...] | None = None
    result: SyncResult | None = None
    collection: str | None = None
    record: str | None = None
    change_id: int | None = None
    code: str | None = None
    conflicts: tuple[Conflict, ...] = ()

    def __str__(self) -> str:
        k = self.kind
        if k == "progress":
            return f"progress {self.phase} {self.done} of {self.total}"
        if k == "completed" and self.result is not None:
            r = self.result
            return (f"completed: {r.uploaded} up, {r.downloaded} down, {r.rejected} rejected, "
                    f"{r.conflicts} with conflicts" + (" (full resync)" if r.reset else ""))
        if k == "conflict":
            fields = ", ".join(c.field for c in self.conflicts)
            return f"conflict on {self.collection}/{self.record}: {fields}"
        if k == "error":
            return f"error: change {self.change_id} of {self.collection}/{self.record} {self.code}: {self.reason}"
        if k == "started":
            return "started" + (f" ({', '.join(self.collections)})" if self.collections else "")
        return k + (f": {self.reason}" if self.reason else "")
