"""The device replica: records on a local store, the outbox, sync status and change events."""

from .docs import RecordDocs
from .outbox import Outbox
from .replica import Replica
from .rows import Rows
from .types import ChangeEvent, PendingChange, Record, RecordStatus

__all__ = ["ChangeEvent", "Outbox", "PendingChange", "Record", "RecordDocs", "RecordStatus", "Replica", "Rows"]
