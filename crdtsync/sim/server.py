"""The simulated server: a store-and-forward relay with a log, and, for the draft strategies, the legacy
server that replays drafts in arrival order (``DraftRecordDoc.replay``).

It keeps one log of entries ``(seq, origin, collection, record, update)``. A device's upload is answered
with the acknowledged change ids, the rejected ones, and every log entry after the device's cursor that the
device did not send itself. Under ``crdt`` and ``lww-field`` the server only stores and forwards the
devices' Yjs updates (merging happens on the devices); under ``lww-record`` and ``lww-patch`` it applies
the drafts to its own copy and forwards only its new image of the record. A change id seen twice from one
device is acknowledged again and not stored twice (the relay's idempotency).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.drafts import SERVER_WRITER, DraftRecordDoc
from ..schema import Schema

__all__ = ["SERVER_CLIENT_ID", "LogEntry", "SimServer", "UploadResult"]

SERVER_CLIENT_ID = 0x7FFFFFFE  # the Yjs client id of the server's own writes (devices draw theirs at random)


@dataclass(frozen=True)
class LogEntry:
    seq: int
    origin: str | None
    collection: str
    record: str
    update: bytes


@dataclass
class UploadResult:
    acked: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # (change id, code, reason)


class SimServer:
    """The server's state and its two roles (relay, or draft replay), with no I/O."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.log: list[LogEntry] = []
        self.knowledge: dict[str, int] = {}  # the simulator's causal bookkeeping, not the strategy's
        self._seen: set[tuple[str, int]] = set()
        self._rejected: dict[tuple[str, int], tuple[int, str, str]] = {}
        self._docs: dict[tuple[str, str], DraftRecordDoc] = {}
        self._clock = 0

    @property
    def head(self) -> int:
        return len(self.log)

    def _doc(self, collection: str, record: str) -> DraftRecordDoc:
        doc = self._docs.get((collection, record))
        if doc is None:
            doc = DraftRecordDoc(self.schema.collection(collection), record, writer=SERVER_WRITER,
                                 device=SERVER_WRITER, user="server", client_id=SERVER_CLIENT_ID)
            self._docs[(collection, record)] = doc
        return doc

    def upload(self, device: str, changes: list[tuple[str, str, int, bytes]], now: int) -> UploadResult:
        """Take a device's pending changes ``(collection, record, change id, update)``, oldest first."""
        out = UploadResult()
        for collection, record, change_id, update in changes:
            key = (device, change_id)
            out.acked.append(change_id)
            if key in self._seen:
                if key in self._rejected:  # a retry of a rejected change is told again
                    out.rejected.append(self._rejected[key])
                continue
            self._seen.add(key)
            if self.schema.collection(collection).strategy in ("lww-record", "lww-patch"):
                doc = self._doc(collection, record)
                doc.apply(update)
                self._clock = max(self._clock + 1, now)
                replay = doc.replay(self._clock)
                for d in replay.rejected:
                    if d.writer.split("#")[0] == device:
                        r = (d.t, "gone", f"{collection}/{record} was deleted on the server")
                        self._rejected[(device, d.t)] = r
                        out.rejected.append(r)
                if replay.update:
                    self.log.append(LogEntry(len(self.log) + 1, None, collection, record, replay.update))
            else:
                self.log.append(LogEntry(len(self.log) + 1, device, collection, record, update))
        rejected = {r[0] for r in out.rejected}
        out.acked = [a for a in out.acked if a not in rejected]
        return out

    def since(self, device: str, cursor: int) -> list[LogEntry]:
        """The log after ``cursor``, without what ``device`` sent itself."""
        return [e for e in self.log[cursor:] if e.origin != device]
