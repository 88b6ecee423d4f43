"""An in-memory byte store: for tests, the simulator, and ``Replica.open(":memory:")``."""

from __future__ import annotations

import bisect

from ..errors import StoreClosed
from .base import Batch, ByteStore
from .keys import Key, decode_key, encode_key, prefix_end

__all__ = ["MemoryStore"]


class MemoryStore(ByteStore):
    """Keys kept sorted by their encoding, so ranges behave exactly as in the SQLite store."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")

    def load(self, key: Key) -> bytes | None:
        self._check()
        return self._data.get(encode_key(key))

    def load_range(self, prefix: Key, *, start: Key | None = None, limit: int | None = None,
                   reverse: bool = False) -> list[tuple[Key, bytes]]:
        self._check()
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be 0 or more, not {limit}")
        lo_b = encode_key(prefix)
        hi_b = prefix_end(lo_b)
        if start is not None:
            if reverse:
                hi_b = min(hi_b, encode_key(start) + b"\x00")
            else:
                lo_b = max(lo_b, encode_key(start))
        lo = bisect.bisect_left(self._keys, lo_b)
        hi = bisect.bisect_left(self._keys, hi_b)
        keys = self._keys[lo:hi]
        if reverse:
            keys = keys[::-1]
        if limit is not None:
            keys = keys[:limit]
        return [(decode_key(k), self._data[k]) for k in keys]

    def commit(self, batch: Batch) -> None:
        self._check()
        # Encode every key before changing anything: a bad key must leave the store as it was.
        ranges = [encode_key(prefix) for prefix in batch.range_removes]
        removes = [encode_key(key) for key in batch.removes]
        saves = [(encode_key(key), data) for key, data in batch.saves.items()]
        for lo_b in ranges:
            lo = bisect.bisect_left(self._keys, lo_b)
            hi = bisect.bisect_left(self._keys, prefix_end(lo_b))
            for k in self._keys[lo:hi]:
                del self._data[k]
            del self._keys[lo:hi]
        for kb in removes:
            if self._data.pop(kb, None) is not None:
                self._keys.pop(bisect.bisect_left(self._keys, kb))
        for kb, data in saves:
            if kb not in self._data:
                bisect.insort(self._keys, kb)
            self._data[kb] = data

    def close(self) -> None:
        self._closed = True
