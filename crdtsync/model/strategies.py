"""Which record document a collection's strategy uses: the one place that maps strategy names to code."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..schema import Collection
from .drafts import DraftRecordDoc
from .lww import LwwFieldDoc
from .record import RecordDoc

__all__ = ["new_record_doc"]


def new_record_doc(collection: Collection, record_id: str, *, writer: str, device: str, user: str,
                   client_id: int, updates: Iterable[bytes] = (), held: Iterable[bytes] = (),
                   wall: Callable[[], int] | None = None) -> RecordDoc:
    """A record document for ``collection.strategy``: ``crdt`` (default), ``lww-field``, ``lww-record``,
    ``lww-patch``. ``wall`` is the device's own wall clock (used by ``lww-field`` only)."""
    if collection.strategy == "lww-field":
        return LwwFieldDoc(collection, record_id, writer=writer, device=device, user=user, client_id=client_id,
                           updates=updates, held=held, wall=wall)
    if collection.strategy in ("lww-record", "lww-patch"):
        return DraftRecordDoc(collection, record_id, writer=writer, device=device, user=user,
                              client_id=client_id, updates=updates, held=held)
    return RecordDoc(collection, record_id, writer=writer, device=device, user=user, client_id=client_id,
                     updates=updates, held=held)
