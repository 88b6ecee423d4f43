"""crdtsync: offline-first sync of business records, on per-field CRDT records (pycrdt).

See README.md for a quick start and docs/ for the design.
"""

from . import clock, errors, model, replica, schema, store
from .client import SyncClient, SyncResult, SyncStatus
from .clock import *  # noqa: F403
from .errors import *  # noqa: F403
from .model import Candidate, Conflict, HistoryEntry
from .relay import Relay
from .replica import ChangeEvent, PendingChange, Record, RecordStatus, Replica
from .schema import *  # noqa: F403
from .store import ByteStore, EncryptedStore, MemoryStore, SQLiteStore

__all__ = [
    *clock.__all__,
    *errors.__all__,
    *schema.__all__,
    "ByteStore",
    "Candidate",
    "ChangeEvent",
    "Conflict",
    "EncryptedStore",
    "HistoryEntry",
    "MemoryStore",
    "PendingChange",
    "Record",
    "RecordStatus",
    "Relay",
    "Replica",
    "SQLiteStore",
    "SyncClient",
    "SyncResult",
    "SyncStatus",
]

__version__ = "0.1.0"
_ = (model, replica, store)
