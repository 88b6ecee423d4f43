"""``crdtsync relay``: run a relay until SIGTERM or SIGINT (then it closes connections, commits what it has
queued, and exits 0). SIGHUP reloads the tokens file. Prints ``listening on ws://HOST:PORT`` once ready."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import ipaddress
import logging
import os
import re
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson

from ..errors import CrdtSyncError, LocalError, StoreInUse
from ..schema import Schema
from ..store.base import ByteStore
from ..store.sqlite import SQLiteStore
from .admission import raise_open_files_limit
from .auth import Tokens, load_tokens, unknown_names
from .server import Limits, Relay
from .watchdog import WatchedStore

__all__ = ["add_arguments", "check_db", "holds_replica", "is_postgres_url", "limits", "load_schema", "open_store",
           "read_tokens", "reload_tokens", "run", "shown_db"]

log = logging.getLogger("crdtsync.relay")


_EPILOG = """\
examples:
  crdtsync relay --schema app.schema:SCHEMA --tokens tokens.toml --host 0.0.0.0 --port 8765
  crdtsync relay --schema schema.json            # open relay on 127.0.0.1, development only
  crdtsync relay --schema schema.json --tokens tokens.toml --db postgresql://relay:pw@db.internal/relay

--schema is MODULE:ATTR (a crdtsync.Schema; MODULE is imported from the current directory too) or a JSON
file written from Schema.to_dict(). Devices connect to ws://HOST:PORT with "Authorization: Bearer TOKEN";
plain Yjs clients to ws://HOST:PORT/yjs/ROOM?token=TOKEN. A tokens file:

  [tokens."s3cret-alice"]
  user = "alice"
  read = ["accounts", "contacts"]              # or "*"
  write = ["accounts"]                         # (writing a collection implies reading it)
  where = { accounts = { owner = "alice" } }   # optional: only these records
  rooms = ["*"]                                # plain Yjs rooms; rooms_read_only = [...]

SIGTERM/SIGINT stop it cleanly (queued changes are committed); SIGHUP reloads the tokens file (a file
refused at start, unreadable or naming what the schema lacks, is logged and the old tokens kept), and
connections whose token was removed (4401) or whose grant changed (1012, they reconnect) are closed.
The schema is read at start only: restart the relay to change it (devices reconnect by themselves).
"""


def _number(kind: type[int] | type[float], low: float, high: float | None = None) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` from ``low`` (to ``high``), else a usage error naming them."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value != value or value < low or (high is not None and value > high):  # (NaN fails the first)
            span = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: {span}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=_number(int, 0, 65535), default=8765,
                        help="port to listen on (default: 8765; 0: any free)")
    parser.add_argument("--db", default="relay.db", metavar="FILE|postgresql://...",
                        help="the relay's SQLite file, created if missing (default: relay.db), or a PostgreSQL "
                             "URL (postgresql://user:password@host:port/dbname; needs crdtsync[postgres]): "
                             "the relay keeps its table kv there, created if missing. To move a relay from one "
                             "database to another: crdtsync relay-copy")
    parser.add_argument("--pg-schema", default=None, metavar="NAME",
                        help="with a PostgreSQL --db only: the schema that holds the relay's table (default: "
                             "the server's search path)")
    parser.add_argument("--schema", required=True, metavar="MODULE:ATTR|FILE.json",
                        help="the collections and their fields (required; see below)")
    parser.add_argument("--tokens", type=Path, default=None, metavar="FILE.toml",
                        help="who may connect and what they may read and write; without it the relay is open "
                             "to anyone and listens on loopback addresses only (development)")
    parser.add_argument("--keep-log", type=_number(int, 0), default=100_000, metavar="N",
                        help="log entries kept for delta sync; devices whose cursor is older get a full resync "
                             "(default: 100000)")
    parser.add_argument("--cache-mb", type=_number(float, 1), default=256, metavar="MB",
                        help="records kept in memory, in MB of their encoded updates (the memory they take is of that "
                             "order) (default: 256)")
    parser.add_argument("--max-frame", type=_number(int, 64 * 1024), default=16 * 1024 * 1024, metavar="BYTES",
                        help="largest frame accepted, from devices and from Yjs clients alike (default: 16 MiB; "
                             "at least 64 KiB)")
    parser.add_argument("--rate", type=_number(float, 0.001), default=500.0, metavar="N",
                        help="frames per second per connection before it is slowed down, in bursts of two "
                             "seconds' worth (at least one frame) (default: 500)")
    parser.add_argument("--max-connections", type=_number(int, 1), default=None, metavar="N",
                        help="websockets open at once, devices and Yjs clients together; one more is refused at its "
                             "handshake with 503 (default: the open-files limit, raised to the hard limit at start, "
                             "less an eighth and at least 64 for the database, logs and handshakes)")
    parser.add_argument("--store-timeout", type=_number(float, 0), default=30.0, metavar="SECONDS",
                        help="a database call (a read or a commit) that has not returned after this long makes the "
                             "relay log CRITICAL and exit with status 1, for its supervisor to restart it: a hung "
                             "database server otherwise hangs the relay (default: 30; 0: no limit)")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL",
                        help="SQLite durability: FULL survives power loss, NORMAL a killed process (default: FULL)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection and commit")


def load_schema(spec: str) -> Schema:
    """A schema from ``module:attr`` (the module is looked up in the current directory too, as an app's
    own module would be) or from a JSON file (``Schema.to_dict`` format)."""
    path = Path(spec)
    if spec.endswith(".json") or (":" not in spec and path.is_file()):
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as e:
            raise LocalError(f"cannot read schema file {spec}: {e}") from None
        try:
            return Schema.from_dict(data)
        except CrdtSyncError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise LocalError(f"{spec} is not a schema written by Schema.to_dict(): {e!r}") from None
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise LocalError(f"--schema must be MODULE:ATTR or a .json file, not {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the console script does not put the current directory on the path
    try:
        value = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise LocalError(f"cannot load schema {spec}: {e}") from None
    if not isinstance(value, Schema):
        kind = type(value).__name__
        raise LocalError(f"{spec} is {'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}, not a Schema")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_postgres_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


#: a URL's scheme (two characters at least: ``C://`` is a Windows path)
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")


def check_db(db: str) -> None:
    """Raise ``LocalError`` if ``db`` is a URL of another kind than PostgreSQL's: ``mysql://x/y`` was taken
    for a SQLite path ("its directory .../mysql:/x does not exist")."""
    m = _URL_SCHEME.match(db)
    if m is not None and not is_postgres_url(db):
        raise LocalError(f"unknown database URL scheme {m.group(1)}://: the relay's database is a SQLite file or a "
                         "PostgreSQL URL (postgresql://...)")


def holds_replica(store: ByteStore) -> bool:
    """Whether ``store`` holds a device's replica (``Replica.open`` wrote it): not a relay's database."""
    return store.load(("meta", "identity")) is not None


def shown_db(db: str) -> str:
    """The database as it may be printed: a URL without its password."""
    if not is_postgres_url(db):
        return db
    parts = urlsplit(db)
    if parts.password is None:
        return db
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def open_store(db: str, *, synchronous: str = "FULL", pg_schema: str | None = None) -> ByteStore:
    """The relay's byte store: SQLite for a file name, PostgreSQL for a ``postgresql://`` URL."""
    if is_postgres_url(db):
        from ..store.postgres import PostgresStore
        store = PostgresStore(db, schema=pg_schema)
        if not store.hold("relay"):  # one relay per table (a SQLite file is held by its store itself)
            store.close()
            where = f"schema {pg_schema}" if pg_schema else "the default schema"
            raise LocalError(f"another relay is using it ({where}): one relay process per database")
        return store
    # the relay commits from its event loop: the writes there, the fsync in a thread (``begin_commit``)
    return SQLiteStore(db, synchronous=synchronous, defer_sync=True)  # type: ignore[arg-type]


class _Held(logging.Filter):
    """Holds back the records of the relay's logger (while it starts): a start that fails because the port
    is taken logs the warnings of a start and then its own undoing ("relay stopped at log head 0"), noise
    in front of the command's one-line error. A start that succeeds lets them through, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


def limits(args: argparse.Namespace) -> Limits:
    """The relay's limits from the options: bursts of two seconds' worth of ``--rate``, and at least one
    frame (a rate under 0.5 made a burst of 0, which ``Limits`` refuses: the relay died at start)."""
    return Limits(max_frame=args.max_frame, rate=args.rate, burst=max(1, int(args.rate * 2)))


def read_tokens(path: Path, schema: Schema) -> Tokens:
    """The tokens file at ``path``, checked against ``schema``: raises ``LocalError`` if it cannot be read or
    if a grant names a collection or field the schema does not have (at start and on every reload alike)."""
    grants = load_tokens(path)
    unknown = unknown_names(grants, schema.collections)
    if unknown:
        raise LocalError(f"{path} names what the schema does not have: " + "; ".join(unknown))
    return Tokens(grants)


def reload_tokens(relay: Relay, path: Path) -> bool:
    """SIGHUP: replace the relay's tokens with the file's, if it passes ``read_tokens``; else log why and
    keep the old ones. Returns whether the new tokens were taken."""
    try:
        tokens = read_tokens(path, relay.schema)
    except LocalError as e:
        log.error("kept the old tokens: %s", e)
        return False
    relay.tokens = tokens
    log.info("reloaded %s", path)
    return True


async def _serve(args: argparse.Namespace, schema: Schema, tokens: Tokens) -> int:
    shown = shown_db(args.db)
    # before anything is opened: the default connection cap is derived from the limit (``Relay``)
    files = raise_open_files_limit()
    try:
        store = open_store(args.db, synchronous=args.synchronous, pg_schema=args.pg_schema)
    except StoreInUse:
        print(f"crdtsync relay: cannot open the database {shown}: another relay (or another program) is using "
              "it: one relay process per database", file=sys.stderr)
        return 1
    except (sqlite3.Error, CrdtSyncError, ImportError) as e:  # (ImportError: psycopg not installed)
        print(f"crdtsync relay: cannot open the database {shown}: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # (its directory is missing, or not writable for the lock file)
        print(f"crdtsync relay: cannot open the database {shown}: {e.strerror or e}", file=sys.stderr)
        return 1
    except Exception as e:  # psycopg's errors (bad URL, server down, refused login)
        if type(e).__module__.split(".")[0] != "psycopg":
            raise
        print(f"crdtsync relay: cannot open the database {shown}: {e}", file=sys.stderr)
        return 1
    if holds_replica(store):  # before the relay writes its keys into a device's file
        store.close()
        print(f"crdtsync relay: {shown} holds a device's replica (Replica.open), not a relay's database: give the "
              "relay a database of its own", file=sys.stderr)
        return 2
    if args.store_timeout > 0:
        store = WatchedStore(store, args.store_timeout)
    try:
        relay = Relay(store, schema, tokens, keep_log=args.keep_log, limits=limits(args), cache_mb=args.cache_mb,
                      max_connections=args.max_connections)
    except Exception as e:
        store.close()
        if not isinstance(e, sqlite3.Error | CrdtSyncError) and type(e).__module__.split(".")[0] != "psycopg":
            raise
        print(f"crdtsync relay: cannot use the database {shown}: {e}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        if args.tokens is not None:
            reload_tokens(relay, args.tokens)
        else:
            log.warning("SIGHUP: this relay runs open (no --tokens): nothing to reload (the schema is read at "
                        "start only: restart the relay to change it)")

    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        held = _Held()
        log.addFilter(held)
        try:
            log.info("open files limit %d%s", files[1], f" (raised from {files[0]})" if files[1] != files[0] else "")
            host, port = await relay.start(args.host, args.port)
        except OSError as e:  # the port is taken: the one-line error, without the log of a start undone
            print(f"crdtsync relay: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
            return 1
        finally:
            log.removeFilter(held)
        for record in held.records:
            log.handle(record)
        print(f"listening on ws://{host}:{port}", flush=True)
        stopped = asyncio.ensure_future(relay.wait_stopped())
        signalled = asyncio.ensure_future(stop.wait())
        await asyncio.wait([stopped, signalled], return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        if relay.failure is not None:  # it stopped by itself: its store failed (logged); a supervisor restarts it
            await stopped
            print(f"crdtsync relay: the store failed, stopped: {relay.failure!r}", file=sys.stderr)
            return 1
        stopped.cancel()
        log.info("shutting down")
        await relay.stop()
    finally:
        store.close()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # websockets' own DEBUG lines hold every request line (a Yjs client's ?token=...) and every frame; its
    # INFO lines are two per connection ("connection open", "connection closed"): only with -v
    logging.getLogger("websockets").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        check_db(args.db)
    except LocalError as e:
        print(f"crdtsync relay: --db: {e}", file=sys.stderr)
        return 2
    if args.pg_schema is not None and not is_postgres_url(args.db):
        print(f"crdtsync relay: --pg-schema is for a PostgreSQL --db (postgresql://...); {args.db} is a SQLite "
              "file", file=sys.stderr)
        return 2
    try:
        schema = load_schema(args.schema)
        if args.tokens is None:
            if not _is_loopback(args.host):
                print(f"crdtsync relay: refusing to run an open relay (no --tokens) on {args.host}: anyone who "
                      "can reach it could read and write everything. Pass --tokens FILE.toml, or listen on a "
                      "loopback address (--host 127.0.0.1) for development.", file=sys.stderr)
                return 2
            tokens = Tokens(None)
        else:
            tokens = read_tokens(args.tokens, schema)
    except CrdtSyncError as e:
        print(f"crdtsync relay: {e}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(args, schema, tokens))
