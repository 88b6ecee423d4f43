"""The sync client: websockets transport with reconnect and backoff, sync queue, status events."""

from .backoff import Backoff
from .client import SyncClient
from .status import StatusKind, SyncResult, SyncStatus

__all__ = ["Backoff", "StatusKind", "SyncClient", "SyncResult", "SyncStatus"]
