"""What a sync client tells the app: status events it can show ("Syncing 3 of 10", "Sync failed", "You're
offline", a conflict to look at, a change the relay rejected) and the result of a sync run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..model.state import Conflict

__all__ = ["StatusKind", "SyncResult", "SyncStatus"]

StatusKind = Literal["offline", "online", "started", "progress", "completed", "failed", "conflict", "error",
                     "held"]


@dataclass(frozen=True)
class SyncResult:
    """One finished sync run.

    - ``uploaded``: pending changes the relay stored (they left the outbox); ``rejected``: changes the relay
      refused (now ``error``, kept); ``held``: changes the relay answered as held, neither stored nor
      rejected, which stay pending: those after a change of the same record that it rejected in the same
      push (they wait for the user to fix, discard or retry it), and those that build on changes the relay
      does not have yet (another device's, received here directly and not synced by that device yet),
      with the later changes of their record (sent again as soon as news of the record arrives, or at the
      next sync). Changes not sent at all, because their record holds a change rejected in an earlier
      run, are not counted;
    - ``received``: record updates the relay sent (the ``n of m`` of the download progress events);
      ``downloaded``: distinct records those updates changed on this device (an update it already had
      changes nothing);
    - ``conflicts``: records uploaded or changed in this run that have an open conflict after it (one
      ``conflict`` status event each, before ``completed``; ``Replica.conflicts()`` lists every open one);
    - ``reset``: the relay sent a full resync of the scope; ``cursor``: the relay log position now synced.
    """

    collections: tuple[str, ...] | None
    uploaded: int = 0
    rejected: int = 0
    held: int = 0
    downloaded: int = 0
    conflicts: int = 0
    reset: bool = False
    cursor: int = 0
    received: int = 0

    def __str__(self) -> str:
        return (f"{self.uploaded} up, {self.received} received, {self.downloaded} records changed, "
                f"{self.rejected} rejected, {self.held} held, {self.conflicts} with conflicts"
                + (" (full resync)" if self.reset else ""))


@dataclass(frozen=True)
class SyncStatus:
    """A status event. ``kind``:

    - ``offline``: no connection to the relay (``reason`` says why; "client closed" after ``close()``, the
      client's last event); ``online``: connected;
    - ``started``: a sync run began (``collections``: its sync units, None for all);
    - ``progress``: ``done`` of ``total`` in ``phase`` ``upload`` (pending changes sent and answered) or
      ``download`` (record updates received: a delta counts the log entries in the device's scope that
      it did not make itself, a full resync counts records; records outside a ``where`` limit are only
      found out while sending, so the last page may lower ``total`` to what was actually sent);
    - ``completed``: the run ended (``result``); ``failed``: it was cut short (``reason``), and is retried
      when the connection comes back (not after "client closed": ``close()`` ended it);
    - ``conflict``: a record uploaded or changed by a sync run (just before its ``completed``), or changed by
      a live update (``reason`` "live update"), has an open conflict (``collection``, ``record``,
      ``conflicts``);
    - ``error``: the relay rejected a change (``change_id``, ``code``: invalid, forbidden or gone,
      ``reason``); the change is kept with status ``error`` and holds the record's later changes;
    - ``held``: the relay held a change back (``change_id``, ``collection``, ``record``), neither stored nor
      rejected, because it builds on another device's writes the relay does not have yet; ``reason`` says
      whose, when the relay can tell, and what to do (that device syncs, or ``discard_record()``). The
      change stays ``pending`` with the reason (``PendingChange.waiting``) and is sent again at each sync.
      One per such change and run (its record's later changes, held behind it, get none); only from a
      relay that gives reasons.
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
            return f"completed: {self.result}"
        if k == "conflict":
            fields = ", ".join(c.field for c in self.conflicts)
            return f"conflict on {self.collection}/{self.record}: {fields}" + (f" ({self.reason})" if self.reason
                                                                               else "")
        if k == "error":
            what = f"change {self.change_id} of " if self.change_id is not None else "update of "  # (from the relay)
            return f"error: {what}{self.collection}/{self.record} {self.code}: {self.reason}"
        if k == "held":
            return f"held: change {self.change_id} of {self.collection}/{self.record}: {self.reason}"
        if k == "started":
            return "started" + (f" ({', '.join(self.collections)})" if self.collections else "")
        return k + (f": {self.reason}" if self.reason else "")
