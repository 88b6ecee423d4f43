"""SQLiteStore keeps ``(name, int)`` keys of the names in ``SEQUENCES`` (a device's outbox, the relay's log)
in tables of their own; through the interface they behave as every other key, in key order with the rest."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from crdtsync.store import Batch, MemoryStore, SQLiteStore
from crdtsync.store.keys import Key, encode_key
from crdtsync.store.sqlite import SEQUENCES

# keys around and inside the sequence tables: ints at the edges, longer keys under a sequence key, str
# segments under the same names, names that share a prefix with them
KEYS: list[Key] = [
    ("out", -(2**63)), ("out", -1), ("out", 0), ("out", 5), ("out", 2**63 - 1), ("out", 5, 1), ("out", 5, "x"),
    ("out", "x"), ("out",), ("log", 3), ("log", 4), ("log", 4, 0), ("o", 1), ("outx", 1), ("a",), ("p", 0),
]
# starts that are no stored key, between and beyond them
STARTS: list[Key] = [*KEYS, ("out", 4), ("out", 6), ("out", 5, 0), ("out", 5, 2), ("log",), ("n",), ("z",), ("out", "")]
PREFIXES: list[Key] = [(), ("out",), ("out", 5), ("out", 6), ("log",), ("log", 4), ("o",), ("out", "x"), ("outx",)]


def _both(tmp_path: Path) -> tuple[SQLiteStore, MemoryStore]:
    sq, mem = SQLiteStore(tmp_path / "s.db", synchronous="OFF"), MemoryStore()
    b = Batch()
    for i, k in enumerate(KEYS):
        b.save(k, f"v{i}".encode())
    sq.commit(b)
    mem.commit(b)
    return sq, mem


def test_ranges_agree_with_the_memory_store_for_every_prefix_start_limit_and_direction(tmp_path: Path) -> None:
    sq, mem = _both(tmp_path)
    for prefix, reverse, limit in itertools.product(PREFIXES, (False, True), (None, 0, 1, 2, 3)):
        assert sq.load_range(prefix, reverse=reverse, limit=limit) == \
            mem.load_range(prefix, reverse=reverse, limit=limit), (prefix, reverse, limit)
        for start in STARTS:
            if start[:len(prefix)] != prefix:
                continue
            assert sq.load_range(prefix, start=start, reverse=reverse, limit=limit) == \
                mem.load_range(prefix, start=start, reverse=reverse, limit=limit), (prefix, start, reverse, limit)
    assert sq.load_ranges(PREFIXES) == mem.load_ranges(PREFIXES)
    assert list(sq.iter_range(("out",), batch=2)) == list(mem.iter_range(("out",), batch=2))
    missing: list[Key] = [("out", 1), ("log", 5)]
    assert sq.load_many([*KEYS, *missing]) == mem.load_many([*KEYS, *missing])
    assert all(sq.load(k) == mem.load(k) for k in KEYS + missing)
    sq.close()


@pytest.mark.parametrize("prefix", PREFIXES)
def test_range_removes_agree_with_the_memory_store(tmp_path: Path, prefix: Key) -> None:
    sq, mem = _both(tmp_path)
    for store in (sq, mem):
        b = Batch()
        b.remove_range(prefix)
        b.remove(("log", 3))
        b.save(("out", 7), b"new")
        store.commit(b)
    assert sq.load_range(()) == mem.load_range(())
    sq.close()


def test_sequence_keys_live_in_their_own_tables_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    store.save(("out", 42), b"entry")  # a local write's commit: one key
    b = Batch()
    b.save(("log", 1), b"one")
    b.save(("log", 2), b"two")
    b.save(("row", "accounts", "a"), b"row")
    b.remove(("log", 9))
    store.commit(b)
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT n, v FROM kv_out").fetchall() == [(42, b"entry")]
    assert db.execute("SELECT n FROM kv_log ORDER BY n").fetchall() == [(1,), (2,)]
    assert db.execute("SELECT count(*) FROM kv").fetchone() == (1,)
    db.close()
    store = SQLiteStore(path)
    assert store.load_range(()) == [(("log", 1), b"one"), (("log", 2), b"two"), (("out", 42), b"entry"),
                                    (("row", "accounts", "a"), b"row")]
    store.close()


def test_a_file_from_an_earlier_version_has_its_sequence_keys_moved_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)  # the layout before: every key in kv
    db.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL)")
    old: list[tuple[Key, bytes]] = [(("out", 10), b"a"), (("out", 11), b"b"), (("out", 11, 1), b"c"),
                                    (("log", 1), b"d"), (("meta", "hlc"), b"e")]
    db.executemany("INSERT INTO kv VALUES (?, ?)", [(encode_key(k), v) for k, v in old])
    db.commit()
    db.close()
    store = SQLiteStore(path)
    assert store.load_range(()) == sorted(old, key=lambda kv: encode_key(kv[0]))
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT n FROM kv_out ORDER BY n").fetchall() == [(10,), (11,)]
    assert db.execute("SELECT n FROM kv_log").fetchall() == [(1,)]
    assert db.execute("SELECT count(*) FROM kv").fetchone() == (2,)  # ("out", 11, 1) and ("meta", "hlc") stay
    db.close()


def test_sequence_ints_beyond_64_bits_are_refused_as_for_any_key(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    for name in SEQUENCES:
        with pytest.raises(ValueError, match="64 bits"):
            store.save((name, 2**63), b"x")
        with pytest.raises(ValueError, match="64 bits"):
            store.load((name, -(2**63) - 1))
    assert store.load_range(()) == []
    store.close()


class _ReaderHook:
    """The store's read connection, committing ``after`` through the store once its first read of ``kv``
    returned: a commit landing between the two statements of one read."""

    def __init__(self, conn: sqlite3.Connection, after: object) -> None:
        self.conn, self.after, self.fired = conn, after, False

    def execute(self, sql: str, *args: object) -> object:
        cur = self.conn.execute(sql, *args)
        if not self.fired and sql.startswith("SELECT k, v FROM kv "):
            self.fired = True
            rows = cur.fetchall()
            self.after()  # type: ignore[operator]
            return _Rows(rows)
        return cur


class _Rows:
    def __init__(self, rows: list[object]) -> None:
        self.rows = rows

    def fetchall(self) -> list[object]:
        return self.rows


def test_a_read_sees_one_state_of_the_store_across_its_tables(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", synchronous="OFF")
    store.save(("out", 1), b"v")

    def move() -> None:  # another thread's commit: the value moves from ("out", 1) to ("out", 1, "x")
        b = Batch()
        b.remove(("out", 1))
        b.save(("out", 1, "x"), b"v")
        store.commit(b)

    reader = store._rdb
    store._rdb = _ReaderHook(reader, move)  # type: ignore[assignment]
    try:
        assert len(store.load_range(("out",))) == 1  # before the move (or after it): never neither
    finally:
        store._rdb = reader
    assert store.load_range(("out",)) == [(("out", 1, "x"), b"v")]
    store.close()


class _Weird(int):
    def __int__(self) -> int:
        return 77


def test_an_int_subclass_is_the_key_its_value_encodes_as(tmp_path: Path) -> None:
    sq, mem = SQLiteStore(tmp_path / "s.db"), MemoryStore()
    for store in (sq, mem):
        b = Batch()
        b.save(("out", _Weird(3)), b"three")
        b.save(("out", 4), b"four")
        store.commit(b)
        store.save(("log", _Weird(5)), b"five")
    for key in [("out", 3), ("out", _Weird(3)), ("out", 77), ("log", 5), ("log", 77)]:
        assert sq.load(key) == mem.load(key), key
    assert sq.load_many([("out", _Weird(3)), ("log", 5)]) == [b"three", b"five"]
    assert sq.load_range(()) == mem.load_range(())
    sq.close()
