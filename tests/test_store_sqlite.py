"""SQLiteStore passes the shared byte store suite, on real files."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from crdtsync.store import SQLiteStore
from crdtsync.store import sqlite as sqlite_module
from crdtsync.store.base import Batch
from crdtsync.store.conformance import ByteStoreConformance, StoreFactory


class TestSQLiteStore(ByteStoreConformance):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return StoreFactory(lambda name: SQLiteStore(tmp_path / f"{name}.db"), persistent=True, thread_safe=True)


class TestSQLiteStoreDeferredSync(ByteStoreConformance):
    """The relay's store: writes at once, syncs the WAL in ``begin_commit``'s function."""

    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return StoreFactory(lambda name: SQLiteStore(tmp_path / f"{name}.db", defer_sync=True), persistent=True,
                            thread_safe=True)


def _synced_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the file each WAL sync of the store targets (a power loss is the one fault that shows a
    missing sync, and it cannot be caused here: what is synced is checked instead)."""
    paths: list[str] = []

    def datasync(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        os.fsync(fd)

    monkeypatch.setattr(sqlite_module, "_datasync", datasync)
    return paths


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc to name a descriptor's file")
def test_deferred_sync_writes_first_then_syncs_the_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _synced_paths(monkeypatch)
    path = tmp_path / "relay.db"
    store = SQLiteStore(path, defer_sync=True)
    try:
        assert store.sync_only
        writer = store._conn()
        assert writer.execute("PRAGMA synchronous").fetchone()[0] == 0  # OFF: the store syncs, not SQLite
        b = Batch()
        b.save(("log", 1), b"one")
        b.save(("log", 2), b"two")
        finish = store.begin_commit(b)
        assert store.load(("log", 2)) == b"two"  # written: readers see it at once
        assert paths == []  # not synced yet
        finish()
        assert paths == [str(path) + "-wal"]
        store.save(("log", 3), b"three")  # a plain commit writes and syncs
        assert paths == [str(path) + "-wal"] * 2
    finally:
        store.close()
    assert not Path(str(path) + "-wal").exists()  # the closing checkpoint copied it into the database
    reopened = SQLiteStore(path)
    try:
        assert reopened.load_range(("log",)) == [(("log", 1), b"one"), (("log", 2), b"two"), (("log", 3), b"three")]
    finally:
        reopened.close()


def test_deferred_sync_checkpoints_in_the_background_at_full(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "relay.db", defer_sync=True)
    try:
        assert store.checkpointer is not None and store.checkpointer.synchronous == "FULL"
        assert store._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for i in range(0, 1200, 100):
            b = Batch()
            for k in range(i, i + 100):
                b.save(("log", k), b"x" * 50)
            store.begin_commit(b)()
        assert store.checkpointer.wait(30)
        assert store.checkpointer.runs >= 1
    finally:
        store.close()


def test_deferred_sync_below_full_has_nothing_to_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _synced_paths(monkeypatch)
    store = SQLiteStore(tmp_path / "n.db", synchronous="NORMAL", defer_sync=True)
    try:
        assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL, as asked
        b = Batch()
        b.save(("k",), b"v")
        store.begin_commit(b)()
        assert store.load(("k",)) == b"v"
        assert paths == []
    finally:
        store.close()


def test_without_deferred_sync_begin_commit_writes_nothing_until_its_function(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "d.db")
    try:
        assert not store.sync_only
        b = Batch()
        b.save(("k",), b"v")
        finish = store.begin_commit(b)
        assert store.load(("k",)) is None
        finish()
        assert store.load(("k",)) == b"v"
    finally:
        store.close()


@pytest.mark.parametrize("defer_sync", [False, True])
def test_a_background_checkpoint_lets_the_next_commit_start_the_wal_over(tmp_path: Path, defer_sync: bool) -> None:
    """SQLite starts the WAL over only when a commit finds all of it copied back; a checkpoint running
    beside a stream of commits never got there, and the WAL grew for as long as the commits went on. The
    checkpointer ends each checkpoint by copying, the store's lock held, what was written meanwhile."""
    path = tmp_path / "x.db"
    store = SQLiteStore(path, synchronous="FULL" if defer_sync else "NORMAL", checkpoint="background",
                        defer_sync=defer_sync)
    assert store.checkpointer is not None
    wal = str(path) + "-wal"
    n = 0

    def write(rows: int) -> None:  # fewer rows than start a checkpoint of the store's own
        nonlocal n
        for _ in range(rows):
            n += 1
            b = Batch()
            b.save(("k", n), b"v" * 300)
            store.begin_commit(b)()

    write(60)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # a checkpoint's first pass...
    write(20)  # ...and commits that came while it ran
    size = os.path.getsize(wal)
    write(60)
    assert os.path.getsize(wal) > size  # appended: without a catch-up the WAL only grows
    store.checkpointer._catch_up(other)
    size = os.path.getsize(wal)
    write(60)
    assert os.path.getsize(wal) == size  # started over: written from its beginning again
    assert len(store.load_range(("k",))) == n
    other.close()
    store.close()
