"""``crdtsync relay-copy SOURCE DESTINATION``: copy a stopped relay's database to another one (SQLite to
PostgreSQL, PostgreSQL to SQLite, or between two of a kind), to move the relay there.

Everything is copied, key by key through the byte store interface: the log and its id, the head, the
records, each device's last change and user, the dedup keys. A relay started on the copy is the same
relay: devices continue by delta from their cursors, and their pending changes (built on what the relay
held) go in. A relay started on an empty database instead is a new relay: devices resync in full and the
changes they made to records synced through the old one are held.

The copy reads the source in pages (``iter_range``) and commits the destination a page at a time, so a
large log is never all in memory. It refuses a source that holds no relay (no relay id: an empty or
unrelated database, or a device's replica) and a destination that holds anything. Both are held while it
runs (SQLite: the file's lock; PostgreSQL: the relay's advisory lock), so neither may be in use by a relay.
It then reads the destination back and compares the number of keys and a digest of every key and value
with the source's. A copy that fails is removed from the destination, which is left empty.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CrdtSyncError, LocalError, StoreError, StoreInUse
from ..store.base import Batch, ByteStore, store_path
from ..store.keys import Key
from .cli import check_db, holds_replica, is_postgres_url, open_store, shown_db

__all__ = ["Copied", "add_arguments", "check_source", "copy_relay_store", "run"]

#: keys per page read from the source and per commit to the destination
PAGE = 1000


@dataclass(frozen=True)
class Copied:
    """What ``copy_relay_store`` copied: the number of keys and the source's log head."""

    keys: int
    head: int


def _add(h: hashlib._Hash, key: Key, value: bytes) -> None:
    """Take one key and its value into the digest ``h`` (the value's length first: no two sequences of
    keys and values hash alike by shifting bytes between them)."""
    h.update(repr(key).encode())
    h.update(len(value).to_bytes(8, "big"))
    h.update(value)


def _digest(store: ByteStore, page: int) -> tuple[int, str]:
    """The number of keys of ``store`` and a digest of every key and value, in key order, read in pages."""
    h = hashlib.sha256()
    n = 0
    for key, value in store.iter_range((), batch=page):
        _add(h, key, value)
        n += 1
    return n, h.hexdigest()


def check_source(src: ByteStore) -> None:
    """Raise ``LocalError`` unless ``src`` holds a relay (its log id)."""
    if src.load(("relay", "id")) is None:
        if holds_replica(src):
            raise LocalError("the source holds a device's replica, not a relay's database")
        raise LocalError("the source holds no relay (no relay id): it is not a relay's database, or no relay "
                         "ever ran on it")


def copy_relay_store(src: ByteStore, dst: ByteStore, *, page: int = PAGE) -> Copied:
    """Copy every key of the relay database ``src`` into the empty store ``dst``, ``page`` keys a commit,
    then check that ``dst`` holds what ``src`` holds. Raises ``LocalError`` (nothing written) if ``src``
    holds no relay or ``dst`` is not empty; if the copy or its check fails (``StoreError`` for a copy that
    does not match), ``dst`` is emptied again and the error raised."""
    check_source(src)
    if dst.load_range((), limit=1):
        raise LocalError("the destination is not empty: copy into a new SQLite file or an empty PostgreSQL "
                         "table (a --pg-schema of its own)")
    h = hashlib.sha256()
    n = 0
    try:
        batch = Batch()
        for key, value in src.iter_range((), batch=page):
            batch.save(key, value)
            _add(h, key, value)
            n += 1
            if len(batch.saves) >= page:
                dst.commit(batch)
                batch = Batch()
        dst.commit(batch)
        copied, digest = _digest(dst, page)
        if (copied, digest) != (n, h.hexdigest()):
            raise StoreError(store_path(dst), f"the copy does not match its source: {copied} keys for {n}, or "
                                              "their bytes differ")
    except BaseException as e:
        try:
            dst.remove_range(())
        except Exception:
            raise StoreError(store_path(dst), f"the copy failed ({e!r}) and could not be removed: empty the "
                                              "destination before trying again") from e
        raise
    return Copied(keys=n, head=int(src.load(("relay", "head")) or b"0"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = """\
examples:
  crdtsync relay-copy relay.db postgresql://relay:pw@db.internal/relay
  crdtsync relay-copy postgresql://relay:pw@db.internal/relay relay.db --from-pg-schema tenant1

Stop the relay first; start it on DESTINATION once the copy is done. Devices then continue by delta."""
    parser.add_argument("source", metavar="SOURCE", help="the relay's database: a SQLite file or a PostgreSQL URL")
    parser.add_argument("destination", metavar="DESTINATION",
                        help="where to copy it: a new SQLite file, or a PostgreSQL URL whose table is empty or "
                             "missing")
    parser.add_argument("--from-pg-schema", default=None, metavar="NAME",
                        help="with a PostgreSQL SOURCE: the schema that holds its table (as the relay's "
                             "--pg-schema)")
    parser.add_argument("--to-pg-schema", default=None, metavar="NAME",
                        help="with a PostgreSQL DESTINATION: the schema to hold its table, created if missing")


def _usage(args: argparse.Namespace) -> str | None:
    """What is wrong with the command's arguments, if anything (before anything is opened)."""
    for db, option, name in ((args.source, args.from_pg_schema, "--from-pg-schema"),
                             (args.destination, args.to_pg_schema, "--to-pg-schema")):
        try:
            check_db(db)
        except LocalError as e:
            return str(e)
        if option is not None and not is_postgres_url(db):
            return f"{name} is for a PostgreSQL database (postgresql://...); {db} is a SQLite file"
    if not is_postgres_url(args.source) and not os.path.isfile(args.source):
        return f"no relay database {args.source}: no such file"
    if not is_postgres_url(args.destination) and os.path.exists(args.destination):
        return f"{args.destination} exists: copy into a new SQLite file"
    same = (args.source, args.from_pg_schema) == (args.destination, args.to_pg_schema) if is_postgres_url(
        args.source) else os.path.realpath(args.source) == os.path.realpath(args.destination)
    if same:
        return "the source and the destination are the same database"
    return None


def _open(db: str, pg_schema: str | None, role: str) -> ByteStore:
    try:
        return open_store(db, pg_schema=pg_schema)
    except StoreInUse:
        raise LocalError(f"cannot open the {role} {shown_db(db)}: a relay (or another program) is using it: "
                         "stop it first") from None
    except (sqlite3.Error, CrdtSyncError, ImportError) as e:
        raise LocalError(f"cannot open the {role} {shown_db(db)}: {e}") from None
    except OSError as e:
        raise LocalError(f"cannot open the {role} {shown_db(db)}: {e.strerror or e}") from None
    except Exception as e:  # psycopg's errors (bad URL, server down, refused login)
        if type(e).__module__.split(".")[0] != "psycopg":
            raise
        raise LocalError(f"cannot open the {role} {shown_db(db)}: {e}") from None


def run(args: argparse.Namespace) -> int:
    problem = _usage(args)
    if problem is not None:
        print(f"crdtsync relay-copy: {problem}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        src = _open(args.source, args.from_pg_schema, "source")
    except LocalError as e:
        print(f"crdtsync relay-copy: {e}", file=sys.stderr)
        return 1
    try:
        try:
            check_source(src)
        except LocalError as e:
            print(f"crdtsync relay-copy: {e}", file=sys.stderr)
            return 2
        return _copy(args, src, t0)
    finally:
        src.close()


def _copy(args: argparse.Namespace, src: ByteStore, t0: float) -> int:
    """Copy ``src`` into the command's destination; 0, or the exit status of a failure it printed. A
    SQLite file it made is removed again if the copy fails."""
    try:
        dst = _open(args.destination, args.to_pg_schema, "destination")
    except LocalError as e:
        print(f"crdtsync relay-copy: {e}", file=sys.stderr)
        return 1
    code = 0
    try:
        copied = copy_relay_store(src, dst)
    except LocalError as e:  # refused: nothing was written
        print(f"crdtsync relay-copy: {e}", file=sys.stderr)
        code = 2
    except Exception as e:
        if not isinstance(e, sqlite3.Error | CrdtSyncError | OSError) and type(e).__module__.split(".")[0] != "psycopg":
            raise
        print(f"crdtsync relay-copy: the copy failed: {e!r}", file=sys.stderr)
        code = 1
    finally:
        dst.close()
    if code != 0:
        if not is_postgres_url(args.destination):
            for suffix in ("", "-wal", "-shm", "-lock"):
                Path(args.destination + suffix).unlink(missing_ok=True)
        return code
    print(f"copied {copied.keys} keys (log head {copied.head}) from {shown_db(args.source)} to "
          f"{shown_db(args.destination)} in {time.monotonic() - t0:.1f} s, checked: start the relay on it")
    return 0
