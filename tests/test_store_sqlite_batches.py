"""SQLiteStore commits a batch in multi-row statements of a few fixed sizes (padded, and cut in chunks of
``_CHUNK`` rows): every size of batch gives what MemoryStore gives, and a commit that fails part way
through, in any of its statements, changes nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from crdtsync.store import MemoryStore, SQLiteStore
from crdtsync.store.base import Batch, ByteStore
from crdtsync.store.keys import Key
from crdtsync.store.sqlite import _CHUNK, _SIZES, _size

# around the statement sizes and the chunk: one row, the sizes themselves and one past them, several chunks
SIZES = [1, 2, 8, 9, 129, _CHUNK - 1, _CHUNK, _CHUNK + 1, 2 * _CHUNK + 3]


def _key(i: int) -> Key:
    return ("k", i % 7, f"id-{i}") if i % 2 else ("j", i)


def _start(store: ByteStore) -> None:
    """Keys 0 to 2 * _CHUNK + 9, and one under a prefix removed below."""
    b = Batch()
    for i in range(0, 2 * _CHUNK + 10):
        b.save(_key(i), b"old %d" % i)
    b.save(("gone", 1), b"x")
    store.commit(b)


def _batch(n: int) -> Batch:
    """n saves, half of them overwriting keys of ``_start``, with removes and a range remove when n > 1."""
    b = Batch()
    for i in range(n):
        b.save(_key(2 * i if i % 2 else 10_000 + i), b"new %d" % i * (i % 5))  # some empty values
    if n > 1:
        for i in range(1, n, 3):
            b.remove(_key(2 * i + 1))
        b.remove(("never", "saved"))
        b.remove_range(("gone",))
    return b


def test_sizes_cover_every_row_count() -> None:
    for n in range(1, _CHUNK + 1):
        assert _size(n) in _SIZES and n <= _size(n) < n * 1.25 + 1, n
    assert len(_SIZES) < 40 and _SIZES[-1] == _CHUNK


@pytest.mark.parametrize("n", SIZES)
def test_batch_agrees_with_memory(tmp_path: Path, n: int) -> None:
    sq = SQLiteStore(tmp_path / "s.db", synchronous="OFF")
    mem = MemoryStore()
    try:
        for store in (sq, mem):
            _start(store)
            store.commit(_batch(n))
        got = sq.load_range(())
        assert got == mem.load_range(())
        assert len(got) >= 2 * _CHUNK
        # the keys and values as SQLite holds them: blobs, none of the padding rows
        types = sq._conn().execute("SELECT DISTINCT typeof(k), typeof(v) FROM kv").fetchall()
        assert types == [("blob", "blob")]
    finally:
        sq.close()


@pytest.mark.parametrize("n", SIZES)
def test_only_saves_agree_with_memory(tmp_path: Path, n: int) -> None:
    """Saves alone (what a relay commits): one statement when they fit in one."""
    sq = SQLiteStore(tmp_path / "s.db", synchronous="OFF")
    mem = MemoryStore()
    try:
        for store in (sq, mem):
            _start(store)
            b = Batch()
            for i in range(n):
                b.save(_key(3 * i), b"v%d" % i)
            b.save((), b"the empty key")
            store.commit(b)
        assert sq.load_range(()) == mem.load_range(())
        assert sq.load(()) == b"the empty key"
    finally:
        sq.close()


@pytest.mark.parametrize("at", [0, _CHUNK - 1, _CHUNK + 2])
@pytest.mark.parametrize("removes", [False, True])
def test_failed_statement_changes_nothing(tmp_path: Path, at: int, removes: bool) -> None:
    """A value SQLite refuses (longer than the connection's length limit), in the first statement or a
    later chunk's, fails the commit after the statements before it ran: all of it is rolled back."""
    sq = SQLiteStore(tmp_path / "s.db", synchronous="OFF")
    try:
        _start(sq)
        before = sq.load_range(())
        sq._conn().setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)
        b = Batch()
        for i in range(_CHUNK + 5):
            b.save(_key(i), b"big" * 400 if i == at else b"fine")
        if removes:
            b.remove(_key(_CHUNK + 7))
        with pytest.raises(sqlite3.DataError):
            sq.commit(b)
        assert sq.load_range(()) == before
        small = Batch()
        small.save(_key(0), b"small")
        small.save(("new",), b"n")
        with pytest.raises(sqlite3.DataError):
            small.save(("too", "big"), b"big" * 400)
            sq.commit(small)  # one statement, a transaction of its own
        assert sq.load_range(()) == before
        sq._conn().setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1_000_000)
        sq.commit(b)  # the store still works
        assert sq.load(_key(at)) == b"big" * 400
    finally:
        sq.close()
