"""The version of a replica store's key layout, and the upgrade of stores written by earlier versions.

Layout 1 stored each pending local change twice: in its outbox entry ``("out", change_id)`` and as a
pending update ``("upd", collection, id, n)`` whose value starts with ``\\x01`` and the 8-byte change id.
Layout 2 stores it once, in the outbox entry, whose header now says ``n``; the update is written under
``("upd", collection, id, n)`` only when the relay acknowledges it. A local write commits one key fewer.

``upgrade`` turns a layout-1 store into a layout-2 one in a single commit (so a crash during it leaves the
store as it was), the first time a store is opened; ``("meta", "layout")`` records that it was done.
Rows need nothing: layout 1 wrote each row with its change, so they are all current.
"""

from __future__ import annotations

from collections import defaultdict

from ..store.base import Batch, ByteStore
from .outbox import OutboxEntry, decode_entry, encode_entry

__all__ = ["LAYOUT", "LAYOUT_KEY", "upgrade"]

LAYOUT = b"2"
LAYOUT_KEY = ("meta", "layout")
_PENDING_V1 = b"\x01"


def upgrade(store: ByteStore) -> None:
    """Bring ``store`` (a replica's) to the current layout, if it is not there yet."""
    if store.load(LAYOUT_KEY) == LAYOUT:
        return
    batch = Batch()
    old: dict[tuple[str, str], list[tuple[OutboxEntry, bytes]]] = defaultdict(list)
    for key, raw in store.iter_range(("out",)):
        entry, update = decode_entry(int(key[1]), raw)
        if entry.n < 0:
            old[(entry.collection, entry.record)].append((entry, update))
    for (c, rid), entries in old.items():
        by_change: dict[int, int] = {}
        next_n = 0
        for key, raw in store.load_range(("upd", c, rid)):
            n = int(key[3])
            next_n = max(next_n, n + 1)
            if raw[:1] == _PENDING_V1:
                by_change[int.from_bytes(raw[1:9], "big", signed=True)] = n
                batch.remove(key)
        for entry, update in entries:
            stored = by_change.get(entry.id)
            if stored is None:  # no stored copy (cannot happen in layout 1): a place after every update
                stored = next_n
                next_n += 1
            entry.n = stored
            batch.save(("out", entry.id), encode_entry(entry, update))
    batch.save(LAYOUT_KEY, LAYOUT)
    store.commit(batch)
