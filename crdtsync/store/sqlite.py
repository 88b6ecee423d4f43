"""The default byte store: one SQLite file in WAL mode, one table of (key BLOB, value BLOB).

``synchronous`` is FULL by default: a commit survives power loss, not only a killed process. NORMAL
survives a killed process (SIGKILL) but may lose the last commits on power loss; it is several times
faster on slow disks.

Reads use a second connection (WAL lets readers run beside a writer), with its own lock, so a reader
never waits for a commit's fsync: a relay commits in a thread while its event loop keeps serving reads.
Readers see committed data only. A ``":memory:"`` database has one connection for both.

The table is an ordinary rowid table with a unique index on the key, not a ``WITHOUT ROWID`` table: the
values (Yjs updates, rows: hundreds of bytes) would otherwise sit in the interior pages of the key's
b-tree too, a handful per page, so that writing 100 records of a 100k-record store split pages up every
level of a deep tree and wrote about 5x more pages per commit than the same 100 records in a 1k-record
store. With the index holding only keys, the pages a commit writes depend on the records it changes, not
on the size of the store. Values are updated in place (an upsert, not ``INSERT OR REPLACE``, which would
delete the row and append it again). Files made with the earlier ``WITHOUT ROWID`` table keep working as
they are (the statements suit both layouts).

Keys of two segments, a name among ``SEQUENCES`` and an int (a device's outbox entries ``("out", change
id)``, the relay's log ``("log", seq)``), live in a table of their own per name, ``kv_<name>``, keyed by the
int: a rowid table, one b-tree and no index. Every local write commits exactly one outbox entry, and in the
key table it cost an upsert into the table and into the key's index (two b-trees, two pages in the WAL):
7 us of a 35 us ``update()``. The tables are invisible through the interface: reads and range scans merge
them with the key table in key order. A file written by an earlier version keeps such keys in ``kv``:
opening it moves them (once, in one transaction). An earlier version opening a file written by this one does
not see them: pending changes would be hidden from it (not lost: they come back once it is upgraded again).

A commit of several keys writes them in multi-row statements (``INSERT ... SELECT ... FROM (VALUES
(?,?), ...) ON CONFLICT``, ``DELETE ... WHERE k IN (...)``), not ``executemany``: one ``sqlite3_step``
per statement, and ``sqlite3`` releases the GIL around each step, so a commit in a thread (the relay's
group commit) gives the GIL back once, not once a row, and runs nearly all its SQLite work on another
core while the event loop goes on. A batch of saves alone that fits in one statement is a transaction of
its own (no BEGIN, no COMMIT); anything more runs in ``BEGIN IMMEDIATE`` ... ``COMMIT``.

``checkpoint="background"`` moves WAL checkpoints out of ``commit`` into a thread (``checkpoint.py``), so
no commit pays for copying what earlier commits wrote; the default, ``"commit"``, is SQLite's own (the
commit that fills the WAL past 1,000 pages checkpoints it). Devices use the background policy
(``Replica.open``): a sync's commit should cost what it writes.

One store per file at a time: a second ``SQLiteStore`` (or ``Replica``) opened on a file that is open
already, in this process or another, raises ``StoreInUse`` before it touches the file. Two handles would
each keep their own view (a replica its outbox, clock and cached documents; the relay its log position)
and overwrite each other's writes. The lock is an OS advisory lock (``flock``, exclusive) on an empty file
beside the database, ``<path>-lock``, held from open to ``close`` (or until the store is garbage
collected): the OS drops it when the process dies, however it dies, so a crash never leaves a file
locked. The ``-lock`` file stays in place after close (removing it would race with another open); it
holds nothing. ``flock`` locks conflict between two opens in one process too. A child made by ``fork``
while a store is open shares its lock. SQLite's own locks are POSIX record locks on the database file,
which ``flock`` on another file never touches. Windows has no ``flock``: there a second open is not
detected. ``":memory:"`` and ``file:`` URIs take no lock.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import sqlite3
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Literal

from ..errors import StoreClosed, StoreInUse
from .base import Batch, ByteStore
from .checkpoint import Checkpointer
from .keys import Key, decode_key, encode_key, prefix_end

__all__ = ["SEQUENCES", "SQLiteStore"]

_UPSERT = "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v"

#: rows per statement at most: a commit of more rows runs several statements in one transaction
_CHUNK = 512


def _size(rows: int) -> int:
    """``rows`` rounded up to a statement size: its three leading bits kept (1 ... 8, 10, 12, 14, 16, 20,
    24 ...), so a few dozen statement texts, prepared once, serve every commit, padded by under a quarter."""
    unit = 1 << max(0, rows.bit_length() - 3)
    return -(-rows // unit) * unit


_SIZES = sorted({_size(n) for n in range(1, _CHUNK + 1)})
#: multi-row upserts by number of rows, bound at once and run by one ``sqlite3_step`` (the GIL released
#: once, not once a row as ``executemany`` did). The rows that pad a commit to a statement size have the
#: integer 0 for key and value, never a key (keys are blobs): the WHERE clause drops them (and lets
#: ``ON CONFLICT`` parse after a SELECT).
_SAVES = {n: "INSERT INTO kv (k, v) SELECT column1, column2 FROM (VALUES " + ",".join(["(?,?)"] * n)
          + ") WHERE typeof(column1) = 'blob' ON CONFLICT (k) DO UPDATE SET v = excluded.v" for n in _SIZES}
_REMOVES = {n: f"DELETE FROM kv WHERE k IN ({','.join('?' * n)})" for n in _SIZES}  # 0 matches no key

#: names whose ``(name, int)`` keys live in a table of their own, ``kv_<name>`` (see the module docstring)
SEQUENCES = ("out", "log")
_SEQ_PREFIX = {name: encode_key((name,)) + b"\x03" for name in SEQUENCES}  # (an int segment's tag)
_OFFSET = 1 << 63
_SEQ_SAVES = {(name, n): f"INSERT INTO kv_{name} (n, v) SELECT column1, column2 FROM (VALUES "
              + ",".join(["(?,?)"] * n) + ") WHERE typeof(column2) = 'blob' ON CONFLICT (n) DO UPDATE SET v = "
              "excluded.v" for name in SEQUENCES for n in _SIZES}
_SEQ_REMOVES = {(name, n): f"DELETE FROM kv_{name} WHERE n IN ({','.join('?' * n)})"
                for name in SEQUENCES for n in _SIZES}  # (padded with NULL, which matches no n)
_SEQ_UPSERT = {name: f"INSERT INTO kv_{name} (n, v) VALUES (?, ?) ON CONFLICT (n) DO UPDATE SET v = excluded.v"
               for name in SEQUENCES}


def _seq(key: Key) -> tuple[str, int] | None:
    """The sequence table of ``key`` and its int, if it lives in one (``SEQUENCES``). The int is the value
    ``encode_key`` encodes (an int subclass's own ``__int__`` is not asked)."""
    if len(key) == 2 and key[0] in _SEQ_PREFIX:
        n = key[1]
        if n.__class__ is not int:
            if not isinstance(n, int) or isinstance(n, bool):
                return None
            return str(key[0]), int.from_bytes(encode_key((n,))[1:], "big") - _OFFSET
        if not -_OFFSET <= n < _OFFSET:
            raise ValueError(f"int key segment {n} does not fit in 64 bits")
        return str(key[0]), n
    return None


def _seq_tables(prefix: Key) -> list[tuple[str, int | None]]:
    """The sequence tables a range under ``prefix`` covers, each with the one int it is limited to (None:
    the whole table)."""
    if not prefix:
        return [(name, None) for name in SEQUENCES]
    if prefix[0] in _SEQ_PREFIX and not isinstance(prefix[0], bool):
        if len(prefix) == 1:
            return [(str(prefix[0]), None)]
        seq = _seq(prefix) if len(prefix) == 2 else None
        if seq is not None:
            return [seq]
    return []


def _first_n(name: str, bound: bytes) -> int:
    """The smallest int whose key ``(name, int)``, encoded, is not below ``bound`` (2**63 if none)."""
    p = _SEQ_PREFIX[name]
    if bound <= p:
        return -_OFFSET
    if not bound.startswith(p):
        return _OFFSET  # (above every such key: the bounds come from keys near these)
    body = bound[len(p):]
    v = int.from_bytes(body[:8].ljust(8, b"\x00"), "big") - _OFFSET
    return v + 1 if len(body) > 8 else v


Synchronous = Literal["FULL", "NORMAL", "OFF"]
Checkpoint = Literal["commit", "background"]


class SQLiteStore(ByteStore):
    def __init__(self, path: str | Path, *, synchronous: Synchronous = "FULL", checkpoint: Checkpoint = "commit",
                 defer_sync: bool = False) -> None:
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise ValueError(f"synchronous must be FULL, NORMAL or OFF, not {synchronous!r}")
        if checkpoint not in ("commit", "background"):
            raise ValueError(f"checkpoint must be 'commit' or 'background', not {checkpoint!r}")
        self.path = str(path)
        on_disk = self.path not in ("", ":memory:") and not self.path.startswith("file:")
        # defer_sync: ``begin_commit`` writes at once and leaves the WAL's sync to the function it returns
        self.defer_sync = self.sync_only = defer_sync and on_disk
        self._sync_wal = self.defer_sync and synchronous == "FULL"
        self._wal = os.path.abspath(self.path) + "-wal"  # what ``_sync`` syncs (SQLite names it so)
        self._dir_synced = False
        # before SQLite opens the file: a second handle fails having changed nothing (see the docstring)
        fd = _lock_file(self.path) if on_disk else None
        # released at most once: by ``close``, or when a store dropped without it is garbage collected
        self._unlock: Callable[[], object] | None = None if fd is None else weakref.finalize(self, os.close, fd)
        self._lock = self._rlock = threading.RLock()  # the write connection (and the reader's, in memory)
        self._db: sqlite3.Connection | None = None
        self._rdb: sqlite3.Connection | None = None
        self.checkpointer: Checkpointer | None = None
        try:
            self._connect(synchronous, checkpoint, on_disk)
        except BaseException:
            self.close()  # and unlock: a file SQLite cannot open stays free for another try
            raise

    def _connect(self, synchronous: Synchronous, checkpoint: Checkpoint, on_disk: bool) -> None:
        db = self._db = self._rdb = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # with deferred syncs the writer never syncs: ``_sync`` does it after each commit, and the
        # checkpointer's connection (at ``synchronous``) syncs what each checkpoint copies
        db.execute(f"PRAGMA synchronous={'OFF' if self._sync_wal else synchronous}")
        db.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL)")
        for name in SEQUENCES:
            db.execute(f"CREATE TABLE IF NOT EXISTS kv_{name} (n INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        self._move_sequences(db)
        if on_disk:
            self._rlock = threading.RLock()
            self._rdb = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._rdb.execute("PRAGMA query_only=ON")
        if (checkpoint == "background" or self.defer_sync) and on_disk:
            db.execute("PRAGMA wal_autocheckpoint=0")
            self.checkpointer = Checkpointer(self.path, synchronous=synchronous, lock=self._lock)
            # a store dropped without close() must not leave its thread waiting forever
            weakref.finalize(self, self.checkpointer.close)

    @staticmethod
    def _move_sequences(db: sqlite3.Connection) -> None:
        """Move the sequence keys an earlier version kept in ``kv`` to their tables, in one transaction."""
        for name, p in _SEQ_PREFIX.items():
            where = "k >= ? AND k < ? AND length(k) = ?"
            if db.execute(f"SELECT 1 FROM kv WHERE {where} LIMIT 1", (p, prefix_end(p), len(p) + 8)).fetchone() is None:
                continue
            db.execute("BEGIN IMMEDIATE")
            try:
                lo = p
                while True:  # in pages, in key order: a relay's whole log is never in memory at once
                    rows = db.execute(f"SELECT k, v FROM kv WHERE {where} ORDER BY k LIMIT 2000",
                                      (lo, prefix_end(p), len(p) + 8)).fetchall()
                    if not rows:
                        break
                    db.executemany(f"INSERT OR REPLACE INTO kv_{name} (n, v) VALUES (?, ?)",
                                   [(int.from_bytes(k[len(p):], "big") - _OFFSET, v) for k, v in rows])
                    lo = bytes(rows[-1][0]) + b"\x00"
                db.execute(f"DELETE FROM kv WHERE {where}", (p, prefix_end(p), len(p) + 8))
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreClosed(f"the store {self.path} is closed")
        return self._db

    def _reader(self) -> sqlite3.Connection:
        if self._rdb is None:
            raise StoreClosed(f"the store {self.path} is closed")
        return self._rdb

    def load(self, key: Key) -> bytes | None:
        seq = _seq(key)
        with self._rlock:
            if seq is not None:
                row = self._reader().execute(f"SELECT v FROM kv_{seq[0]} WHERE n = ?", (seq[1],)).fetchone()
            else:
                row = self._reader().execute("SELECT v FROM kv WHERE k = ?", (encode_key(key),)).fetchone()
        return None if row is None else bytes(row[0])

    def load_many(self, keys: Sequence[Key]) -> list[bytes | None]:
        encoded = [encode_key(k) for k in keys]
        seqs: dict[str, list[int]] = {}
        for k in keys:
            seq = _seq(k)
            if seq is not None:
                seqs.setdefault(seq[0], []).append(seq[1])
        found: dict[bytes, bytes] = {}
        with self._rlock, self._snapshot(bool(seqs)):  # the read connection, as ``load``: never waits for a commit
            db = self._reader()
            for i in range(0, len(encoded), 500):
                chunk = encoded[i:i + 500]
                sql = f"SELECT k, v FROM kv WHERE k IN ({','.join('?' * len(chunk))})"
                found.update((bytes(k), bytes(v)) for k, v in db.execute(sql, chunk))
            for name, ns in seqs.items():
                for i in range(0, len(ns), 500):
                    part = ns[i:i + 500]
                    sql = f"SELECT n, v FROM kv_{name} WHERE n IN ({','.join('?' * len(part))})"
                    found.update((encode_key((name, n)), bytes(v)) for n, v in db.execute(sql, part))
        return [found.get(k) for k in encoded]

    def load_range(self, prefix: Key, *, start: Key | None = None, limit: int | None = None,
                   reverse: bool = False) -> list[tuple[Key, bytes]]:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be 0 or more, not {limit}")
        lo = encode_key(prefix)
        hi = prefix_end(lo)
        if start is not None:
            if reverse:
                hi = min(hi, encode_key(start) + b"\x00")
            else:
                lo = max(lo, encode_key(start))
        order = "DESC" if reverse else "ASC"
        sql = f"SELECT k, v FROM kv WHERE k >= ? AND k < ? ORDER BY k {order}"
        args: tuple[object, ...] = (lo, hi)
        if limit is not None:
            sql += " LIMIT ?"
            args += (limit,)
        tables = _seq_tables(prefix)
        with self._rlock, self._snapshot(bool(tables)):
            db = self._reader()
            rows = db.execute(sql, args).fetchall()
            if not tables:
                return [(decode_key(bytes(k)), bytes(v)) for k, v in rows]
            if len(tables) == 1 and not rows:  # within one table, and no other key there (as always): no merge
                return self._seq_range(db, tables[0], lo, hi, order, limit)
            merged: list[tuple[bytes, Key, bytes]] = [(bytes(k), decode_key(bytes(k)), bytes(v)) for k, v in rows]
            for table in tables:
                merged += [(encode_key(key), key, v) for key, v in self._seq_range(db, table, lo, hi, order, limit)]
        merged.sort(key=lambda row: row[0], reverse=reverse)
        if limit is not None:
            del merged[limit:]
        return [(key, v) for _, key, v in merged]

    @contextlib.contextmanager
    def _snapshot(self, needed: bool) -> Iterator[None]:
        """When ``needed``: the reads inside see one state of the store (a read transaction on the reader):
        a read of ``kv`` and of a sequence table, with a commit between them, saw a key moved from one to
        the other in both, or in neither. Call with ``_rlock`` held."""
        if not needed:
            yield
            return
        db = self._reader()
        db.execute("BEGIN")
        try:
            yield
        finally:
            db.execute("COMMIT")

    @staticmethod
    def _seq_range(db: sqlite3.Connection, table: tuple[str, int | None], lo: bytes, hi: bytes, order: str,
                   limit: int | None) -> list[tuple[Key, bytes]]:
        """``load_range`` of the keys of one sequence table between the encoded bounds ``lo`` and ``hi``."""
        name, only = table
        first, end = _first_n(name, lo), _first_n(name, hi)
        if only is not None:
            first, end = max(first, only), min(end, only + 1)
        if first >= end:
            return []
        q = f"SELECT n, v FROM kv_{name} WHERE n >= ? AND n <= ? ORDER BY n {order}"
        args: tuple[object, ...] = (first, end - 1)
        if limit is not None:
            q += " LIMIT ?"
            args += (limit,)
        return [((name, n), bytes(v)) for n, v in db.execute(q, args)]

    def load_ranges(self, prefixes: Sequence[Key]) -> list[list[tuple[Key, bytes]]]:
        if any(_seq_tables(p) for p in prefixes):
            return [self.load_range(p) for p in prefixes]
        bounds = []
        for p in prefixes:
            lo = encode_key(p)
            bounds.append((lo, prefix_end(lo)))
        rows: list[tuple[bytes, bytes]] = []
        with self._lock:
            db = self._conn()
            for i in range(0, len(bounds), 200):
                chunk = bounds[i:i + 200]
                sql = " UNION ALL ".join(["SELECT k, v FROM kv WHERE k >= ? AND k < ?"] * len(chunk))
                rows += db.execute(sql, [b for pair in chunk for b in pair]).fetchall()
        # the ranges may overlap (a prefix of another) and come back in any order: sort them out here
        rows = sorted(set(rows))
        out: list[list[tuple[Key, bytes]]] = []
        for lo, hi in bounds:
            j = bisect.bisect_left(rows, (lo,))
            got = []
            while j < len(rows) and rows[j][0] < hi:
                k, v = rows[j]
                got.append((decode_key(bytes(k)), bytes(v)))
                j += 1
            out.append(got)
        return out

    def commit(self, batch: Batch) -> None:
        self._write(batch)
        if self._sync_wal:
            self._sync()

    def begin_commit(self, batch: Batch) -> Callable[[], None]:
        """With ``defer_sync``: writes ``batch`` now (readers see it at once) and returns the sync of the
        WAL to disk, for a thread (a no-op below ``synchronous=FULL``). Without: all of it in the function."""
        if not self.defer_sync:
            return partial(self.commit, batch)
        self._write(batch)
        return self._sync if self._sync_wal else _nothing

    def _sync(self) -> None:
        """Make every commit written so far durable: ``fdatasync`` of the WAL file, as SQLite itself does at
        ``synchronous=FULL`` (and of its directory, once, as SQLite does after creating the WAL). The WAL
        is opened anew each time: it is never replaced while the store is open (this store's connections
        keep it), but a stale descriptor would sync nothing."""
        _sync_path(self._wal, _datasync)
        if not self._dir_synced:
            _sync_path(os.path.dirname(self._wal), os.fsync)
            self._dir_synced = True

    def _write(self, batch: Batch) -> None:
        with self._lock:
            db = self._conn()
            if len(batch.saves) == 1 and not batch.removes and not batch.range_removes:
                # one statement is a transaction of its own: the same guarantees, two calls fewer (a local
                # write commits one key, its outbox entry, and BEGIN + COMMIT were a sixth of its commit)
                ((key, value),) = batch.saves.items()
                seq = _seq(key)
                if seq is not None:
                    db.execute(_SEQ_UPSERT[seq[0]], (seq[1], value))
                else:
                    db.execute(_UPSERT, (encode_key(key), value))
                if self.checkpointer is not None:
                    # counted as the three keys a local write used to commit: its pages (the table's, the
                    # index's) are fewer than a third of a 3-key commit's, and checkpointing every 1000 of
                    # them let the log grow long enough to slow every page lookup (a longer WAL index)
                    self.checkpointer.wrote(3)
                return
            if not batch:
                return
            # Encoded first: a bad key fails before anything is written.
            ranges = [encode_key(p) for p in batch.range_removes]
            seq_ranges = [t for p in batch.range_removes for t in _seq_tables(p)]
            seq_saves: dict[str, list[bytearray | int]] = {}
            seq_removes: dict[str, list[bytearray | int]] = {}
            kv_saves: dict[Key, bytes] = {}
            kv_removes: list[Key] = []
            for k, v in batch.saves.items():
                seq = _seq(k)
                if seq is None:
                    kv_saves[k] = v
                else:
                    seq_saves.setdefault(seq[0], []).extend((seq[1], bytearray(v)))
            for k in batch.removes:
                seq = _seq(k)
                if seq is None:
                    kv_removes.append(k)
                else:
                    seq_removes.setdefault(seq[0], []).append(seq[1])
            removes = _params([bytearray(encode_key(k)) for k in kv_removes], 1)
            flat: list[bytearray | int] = [0] * (2 * len(kv_saves))  # key, value, key, value ...
            flat[0::2] = [bytearray(encode_key(k)) for k in kv_saves]
            flat[1::2] = map(bytearray, kv_saves.values())
            saves = _params(flat, 2)
            if not ranges and not removes and len(saves) == 1 and not seq_saves and not seq_removes:
                # one statement, a transaction of its own: atomic as BEGIN ... COMMIT, two steps fewer
                db.execute(_SAVES[len(saves[0]) // 2], saves[0])
            else:
                db.execute("BEGIN IMMEDIATE")
                try:
                    for lo in ranges:
                        db.execute("DELETE FROM kv WHERE k >= ? AND k < ?", (lo, prefix_end(lo)))
                    for name, only in seq_ranges:
                        if only is None:
                            db.execute(f"DELETE FROM kv_{name}")
                        else:
                            db.execute(f"DELETE FROM kv_{name} WHERE n = ?", (only,))
                    for chunk in removes:
                        db.execute(_REMOVES[len(chunk)], chunk)
                    for name, ns in seq_removes.items():
                        for i in range(0, len(ns), _CHUNK):
                            part: list[bytearray | int | None] = list(ns[i:i + _CHUNK])
                            size = _size(len(part))
                            db.execute(_SEQ_REMOVES[(name, size)], part + [None] * (size - len(part)))
                    for chunk in saves:
                        db.execute(_SAVES[len(chunk) // 2], chunk)
                    for name, rows in seq_saves.items():
                        for chunk in _params(rows, 2):
                            db.execute(_SEQ_SAVES[(name, len(chunk) // 2)], chunk)
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise
            if self.checkpointer is not None:
                self.checkpointer.wrote(len(batch.saves) + len(batch.removes) + len(batch.range_removes))

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()
        with self._lock, self._rlock:
            if self._rdb is not None and self._rdb is not self._db:
                self._rdb.close()
            self._rdb = None
            if self._db is not None:
                if self._sync_wal:
                    # the last connection to close checkpoints the WAL into the database and deletes it:
                    # at FULL, that checkpoint syncs the database first
                    self._db.execute("PRAGMA synchronous=FULL")
                self._db.close()
                self._db = None
        if self._unlock is not None:
            self._unlock()  # last: another handle may open the file once this one is done with it


def _lock_file(path: str) -> int | None:
    """Take the exclusive lock on ``<path>-lock`` (see the module docstring), or raise ``StoreInUse``.

    Returns the descriptor that holds it (closing it releases the lock); None where there is no ``flock``
    (Windows)."""
    if sys.platform == "win32":
        return None
    import fcntl

    lock_path = os.path.realpath(path) + "-lock"  # (a symlink to the file locks the file itself)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):  # else the error would name the lock file, which the user never named
        raise FileNotFoundError(errno.ENOENT, f"its directory {folder} does not exist (create it first)", path)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreInUse(path) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _rollback(db: sqlite3.Connection) -> None:
    """Undo the transaction a failed statement left open, if any. On some errors SQLite rolls back by itself
    (``SQLITE_FULL``: "database or disk is full"), and a ROLLBACK then failed with "cannot rollback - no
    transaction is active", which replaced the error that said why (a full disk showed as that). Call it in
    an ``except`` that re-raises: an error of the rollback itself never hides the one being raised."""
    if not db.in_transaction:
        return
    with contextlib.suppress(sqlite3.Error):
        db.execute("ROLLBACK")


def _nothing() -> None:
    """The second step of a commit that had nothing left to do."""


_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def _sync_path(path: str, sync: Callable[[int], None]) -> None:
    """``sync`` (``fsync``, ``fdatasync``) of the file or directory at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        sync(fd)
    finally:
        os.close(fd)


def _params(rows: list[bytearray | int], width: int) -> list[list[bytearray | int]]:
    """The parameters of ``rows`` (``width`` parameters a row, flat) as those of statements of ``_CHUNK``
    rows, the last one padded with zeros up to a statement size (``_size``).

    Blobs are bound as ``bytearray``: ``sqlite3`` binds a bytearray as it is but looks a ``bytes`` up in
    its adapters first (``__adapt__``, ``__conform__``), which cost more than the copy: 1.2 µs a row of
    (key, value) as bytes, 0.8 µs as bytearrays, copies included. A padding zero binds in 0.1 µs.
    """
    step = _CHUNK * width
    chunks = [rows] if len(rows) <= step else [rows[i:i + step] for i in range(0, len(rows), step)]
    last = chunks[-1]
    n = len(last) // width
    if n:
        last += [0] * ((_size(n) - n) * width)
    else:
        chunks.pop()
    return chunks
