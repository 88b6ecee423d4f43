"""The byte store interface: bytes under tuple keys, nothing more.

Modelled on automerge-repo's storage adapters. A backend knows nothing of records, snapshots or
compaction; that policy lives in ``crdtsync.replica.docs``. A backend must make ``commit`` atomic and
durable: when it returns, every save and remove of the batch is on disk together, or none is.
"""

from __future__ import annotations

import errno
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

from .keys import Key

__all__ = ["Batch", "ByteStore", "is_full", "store_path"]


@dataclass
class Batch:
    """Writes to commit together: saves, removes of single keys, and removes of key ranges."""

    saves: dict[Key, bytes] = field(default_factory=dict)
    removes: set[Key] = field(default_factory=set)
    range_removes: list[Key] = field(default_factory=list)

    def save(self, key: Key, data: bytes) -> None:
        self.removes.discard(key)
        self.saves[key] = bytes(data)

    def remove(self, key: Key) -> None:
        self.saves.pop(key, None)
        self.removes.add(key)

    def remove_range(self, prefix: Key) -> None:
        n = len(prefix)
        for k in [k for k in self.saves if k[:n] == prefix]:
            del self.saves[k]
        self.range_removes.append(prefix)

    def __bool__(self) -> bool:
        return bool(self.saves or self.removes or self.range_removes)


class ByteStore(ABC):
    """Bytes under tuple keys. ``commit`` applies range removes, then removes, then saves, atomically.

    ``sync_only``: the function ``begin_commit`` returns does no more than sync local files to disk (it
    never waits on a network or on a lock held elsewhere), so a caller may run it where it is."""

    sync_only: bool = False

    @abstractmethod
    def load(self, key: Key) -> bytes | None:
        """The bytes under ``key``, or None."""

    @abstractmethod
    def load_range(self, prefix: Key, *, start: Key | None = None, limit: int | None = None,
                   reverse: bool = False) -> list[tuple[Key, bytes]]:
        """Every (key, bytes) whose key starts with ``prefix``, in key order (``reverse`` for descending).

        ``start`` (a full key under ``prefix``) skips keys before it (after it, when reversed);
        ``limit`` (0 or more; a negative limit is a ValueError) caps the number returned.
        """

    def load_many(self, keys: Sequence[Key]) -> list[bytes | None]:
        """The bytes under each key (None where absent), in order. Backends may do it in one query."""
        return [self.load(k) for k in keys]

    def load_ranges(self, prefixes: Sequence[Key]) -> list[list[tuple[Key, bytes]]]:
        """``load_range(prefix)`` for each prefix, in order. Backends may do it in one query: a bulk merge
        reads the updates of hundreds of records, and a query per record was a third of its cost."""
        return [self.load_range(p) for p in prefixes]

    def iter_range(self, prefix: Key, *, batch: int = 1000) -> Iterator[tuple[Key, bytes]]:
        """Like ``load_range`` but in pages, so a large range is never all in memory."""
        if batch < 1:
            raise ValueError(f"iter_range needs a page size of at least 1, not {batch}")
        start: Key | None = None
        while True:
            page = self.load_range(prefix, start=start, limit=batch + (1 if start is not None else 0))
            if start is not None and page and page[0][0] == start:
                page = page[1:]
            if not page:
                return
            yield from page
            start = page[-1][0]

    @abstractmethod
    def commit(self, batch: Batch) -> None:
        """Apply a batch atomically and durably."""

    def begin_commit(self, batch: Batch) -> Callable[[], None]:
        """Commit ``batch`` in two steps, for a caller that must not block (the relay's event loop).

        This call does what is quick and may block only briefly; the function it returns does the rest,
        blocking (run it in a thread), and once it returned the batch is committed as by ``commit``. Between
        the two, readers of this store may already see the batch (``SQLiteStore(defer_sync=True)`` writes it
        at once and only syncs it to disk in the function), but it may not be durable yet: report nothing of
        it as stored before the function returned. An error of either step means the batch may not be
        stored. The default does everything in the function."""
        return partial(self.commit, batch)

    def save(self, key: Key, data: bytes) -> None:
        b = Batch()
        b.save(key, data)
        self.commit(b)

    def remove(self, key: Key) -> None:
        b = Batch()
        b.remove(key)
        self.commit(b)

    def remove_range(self, prefix: Key) -> None:
        b = Batch()
        b.remove_range(prefix)
        self.commit(b)

    def close(self) -> None:  # noqa: B027 - optional for backends with nothing to release
        """Release the backend's resources."""


def is_full(exc: BaseException) -> bool:
    """Whether a store's error says its disk (or database) is full: SQLite's ``SQLITE_FULL`` ("database or
    disk is full"), PostgreSQL's ``disk_full`` (SQLSTATE 53100), or an ``OSError`` ENOSPC."""
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL \
            or "database or disk is full" in str(exc)
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOSPC
    return getattr(exc, "sqlstate", None) == "53100"


def store_path(store: ByteStore) -> str:
    """What names ``store`` in an error message: its file (SQLite; through a wrapper such as
    ``EncryptedStore``), its table (PostgreSQL), else its class."""
    inner = getattr(store, "inner", None)
    if isinstance(inner, ByteStore):
        return store_path(inner)
    for attr in ("path", "table"):
        value = getattr(store, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(store).__name__
