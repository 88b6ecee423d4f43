"""SQLiteStore's table layout and checkpoint policy: what a commit writes depends on what it changes, not on
the size of the store, and checkpoints run off the committing thread when asked to."""

from __future__ import annotations

import gc
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crdtsync import Replica
from crdtsync.demo import DEMO_SCHEMA
from crdtsync.store import SQLiteStore
from crdtsync.store.base import Batch
from crdtsync.store.checkpoint import Checkpointer
from crdtsync.store.keys import encode_key

_UPDATE = bytes(range(256)) * 2 + b"u" * 88  # about the size of a record's create update
_ROW = b"r" * 264  # and of its materialised row


def _fill(store: SQLiteStore, records: int) -> None:
    """Records laid out as a replica lays them out after a full resync: an update and a row each."""
    b = Batch()
    for i in range(records):
        b.save(("upd", "accounts", f"acct-{i:07d}", 0), b"\x00" + _UPDATE)
        b.save(("row", "accounts", f"acct-{i:07d}"), _ROW)
    store.commit(b)


def _wal_pages(path: Path) -> int:
    return os.path.getsize(f"{path}-wal") // 4096


def _pages_per_commit(tmp_path: Path, records: int) -> float:
    """WAL pages written by commits that each merge an update into 50 records spread over the store."""
    path = tmp_path / f"s{records}.db"
    store = SQLiteStore(path, synchronous="OFF")
    try:
        _fill(store, records)
        store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store._conn().execute("PRAGMA wal_autocheckpoint=0")  # the WAL only grows: its size counts pages
        step = records // 50
        for rnd in range(3):
            b = Batch()
            for i in range(rnd, records, step):
                b.save(("upd", "accounts", f"acct-{i:07d}", 1 + rnd), b"\x00" + b"m" * 90)
                b.save(("row", "accounts", f"acct-{i:07d}"), _ROW + b"12")
            store.commit(b)
        return _wal_pages(path) / 3
    finally:
        store.close()


def test_a_commit_writes_as_many_pages_in_a_large_store_as_in_a_smaller_one(tmp_path: Path) -> None:
    smaller = _pages_per_commit(tmp_path, 5_000)
    large = _pages_per_commit(tmp_path, 20_000)
    # 100 rows changed: about a page each (the row's table page, the new update's index page), whatever the
    # size of the store. With the values in the key's b-tree (the former WITHOUT ROWID table), interior
    # pages held a handful of keys each: 199 pages per commit at 5k records, 232 at 20k, 266 at 50k.
    assert large <= 1.1 * smaller, (smaller, large)
    assert large <= 150, large


def test_a_store_made_with_the_former_without_rowid_table_still_works(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
    db.execute("INSERT INTO kv VALUES (?, ?)", (encode_key(("a", 1)), b"old"))
    db.commit()
    db.close()
    store = SQLiteStore(path)
    try:
        assert store.load(("a", 1)) == b"old"
        store.save(("a", 1), b"new")
        store.save(("a", 2), b"two")
        assert store.load_range(("a",)) == [(("a", 1), b"new"), (("a", 2), b"two")]
    finally:
        store.close()


def test_background_checkpoints_copy_the_wal_into_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "bg.db"
    store = SQLiteStore(path, checkpoint="background")
    cp = store.checkpointer
    assert cp is not None
    try:
        assert store._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # no commit checkpoints
        _fill(store, cp.every // 4)  # half of the rows a checkpoint waits for
        assert cp.wait(10.0) and cp.runs == 0
        size_before = os.path.getsize(path)
        _fill(store, cp.every // 4)
        assert cp.wait(10.0), "the checkpoint did not run within 10 s"
        assert cp.runs == 1
        assert os.path.getsize(path) > size_before + 50 * 4096  # the pages reached the database file
        assert store.load(("row", "accounts", "acct-0000000")) == _ROW
    finally:
        store.close()
    thread = cp._thread
    assert thread is not None and not thread.is_alive()  # close stopped it
    again = SQLiteStore(path)
    try:
        assert len(again.load_range(("upd",))) == cp.every // 4
    finally:
        again.close()


def test_replicas_checkpoint_in_the_background_and_memory_stores_do_not(tmp_path: Path) -> None:
    with Replica.open(tmp_path / "phone.db", DEMO_SCHEMA, device="phone", user="alice") as r:
        assert isinstance(r.store, SQLiteStore) and r.store.checkpointer is not None
    for store, policy in [(SQLiteStore(":memory:", checkpoint="background"), None),
                          (SQLiteStore(tmp_path / "relay.db"), None)]:  # the default: SQLite's own policy
        try:
            assert store.checkpointer is policy
        finally:
            store.close()
    with pytest.raises(ValueError):
        SQLiteStore(tmp_path / "x.db", checkpoint="never")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Checkpointer(str(tmp_path / "y.db"), synchronous="FULL", every=0)


_CHILD = textwrap.dedent("""
    import sys
    from crdtsync.store import Batch, SQLiteStore
    store = SQLiteStore(sys.argv[1], checkpoint="background")
    store.checkpointer.every = 40  # a checkpoint every other commit: the kill lands in some
    i = 0
    while True:
        b = Batch()
        for j in range(20):
            b.save(("k", i, j), bytes([j]) * 700)
        store.commit(b)
        print(i, flush=True)
        i += 1
""")


@pytest.mark.parametrize("after", [7, 60])
def test_sigkill_during_background_checkpoints_loses_no_commit(tmp_path: Path, after: int) -> None:
    path = tmp_path / "kill.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None
    done = []
    try:
        while len(done) < after:
            line = proc.stdout.readline()
            if not line:
                break
            done.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL and len(done) == after
    if after >= 60:  # dozens of checkpoints were asked for: some ran, pages reached the database file
        assert os.path.getsize(path) > 20 * 4096
    store = SQLiteStore(path)
    try:
        assert store._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for i in done:
            assert store.load_range(("k", i)) == [(("k", i, j), bytes([j]) * 700) for j in range(20)]
    finally:
        store.close()


def test_a_store_dropped_without_close_stops_its_checkpoint_thread(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "dropped.db", checkpoint="background")
    cp = store.checkpointer
    assert cp is not None
    _fill(store, cp.every)
    assert cp.wait(10.0) and cp.runs >= 1
    thread = cp._thread
    assert thread is not None and thread.is_alive()
    del store
    gc.collect()
    thread.join(10.0)
    assert not thread.is_alive()
