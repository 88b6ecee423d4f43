"""A byte store on PostgreSQL (psycopg 3), for relays that outgrow one machine.

One table ``kv (k BYTEA PRIMARY KEY, v BYTEA NOT NULL)`` per store; ``table`` and ``schema`` name it, so
several stores (several relays, tenants, test runs) can share one database. Keys are encoded exactly as
for SQLite (``crdtsync.store.keys``), and PostgreSQL compares BYTEA bytewise, whatever the collation, so
ranges are one index scan with the same order as every other backend. ``commit`` is one transaction.

Several relay processes sharing one database can tell each other about new data with LISTEN/NOTIFY:
``commit(batch, notify=[(channel, payload)])`` sends the notifications in the commit's own transaction (so
a listener never hears of data it cannot read yet, and a failed commit notifies nobody), and
``listen(channel)`` returns a :class:`Listener` on a connection of its own (``alisten`` an
:class:`AsyncListener`, for an asyncio relay).

Install with the ``postgres`` extra (``pip install "crdtsync[postgres]"``). Like ``SQLiteStore``, one
store holds one connection, shared by threads under a lock. A lost connection is not re-established:
operations raise psycopg's ``OperationalError``; open a new store. Connections have TCP keepalives and a
``tcp_user_timeout`` unless the conninfo sets them (``_timeouts``).
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import StoreClosed, StoreError
from .base import Batch, ByteStore
from .keys import Key, decode_key, encode_key, prefix_end

if TYPE_CHECKING:
    import psycopg

__all__ = ["AsyncListener", "Listener", "Notification", "PostgresStore"]

# Any constant will do: it only serialises CREATE SCHEMA/TABLE IF NOT EXISTS between processes, which race.
_DDL_LOCK = 0x63726474


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('PostgresStore needs psycopg 3: pip install "crdtsync[postgres]"') from e
    return psycopg


def _timeouts(conninfo: str, connect_timeout: int) -> dict[str, Any]:
    """What bounds the waits of a connection to ``conninfo``: how long to connect (``connect_timeout``), and,
    unless ``conninfo`` sets them, TCP keepalives (an idle connection whose server is gone from the network
    ends after about 25 s: 10 s idle, then 3 probes 5 s apart) and ``tcp_user_timeout`` (data sent and not
    acknowledged for 30 s ends it). A server that is there but does not answer is not bounded by these
    (the relay's ``--store-timeout`` is)."""
    pg = _psycopg()
    given = pg.conninfo.conninfo_to_dict(conninfo)
    wanted: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                              "keepalives_count": 3}
    if pg.pq.version() >= 120000:  # (libpq 12 added it)
        wanted["tcp_user_timeout"] = 30_000
    return {k: v for k, v in wanted.items() if k not in given} | {"connect_timeout": connect_timeout}


@dataclass(frozen=True)
class Notification:
    """One NOTIFY received: its channel, its payload (text, at most 8000 bytes) and the sender's pid."""

    channel: str
    payload: str
    pid: int


class PostgresStore(ByteStore):
    """Bytes under tuple keys in one PostgreSQL table.

    ``conninfo`` is a libpq string or URL (empty: libpq's ``PG*`` environment variables). ``commit``
    takes an extra ``notify``; through a wrapper such as ``EncryptedStore`` call ``notify`` after the
    commit instead (a listener may then hear of it before a crash loses it: it must check the data).
    """

    def __init__(self, conninfo: str = "", *, table: str = "kv", schema: str | None = None,
                 connect_timeout: int = 10) -> None:
        pg = _psycopg()
        from psycopg import sql

        for what, name in (("table", table), ("schema", schema)):
            if name is not None and not (0 < len(name.encode()) <= 63):
                raise ValueError(f"{what} name must be 1 to 63 bytes, not {name!r}")
        self.conninfo = conninfo
        self.table = table
        self.schema = schema
        self._lock = threading.RLock()
        self._db: psycopg.Connection[Any] | None = pg.connect(conninfo, autocommit=True,
                                                              **_timeouts(conninfo, connect_timeout))
        t = sql.Identifier(schema, table) if schema else sql.Identifier(table)
        self._t = t
        self._sql = {
            "load": sql.SQL("SELECT v FROM {} WHERE k = %b").format(t),
            "asc": sql.SQL("SELECT k, v FROM {} WHERE k >= %b AND k < %b ORDER BY k ASC LIMIT %s").format(t),
            "desc": sql.SQL("SELECT k, v FROM {} WHERE k >= %b AND k < %b ORDER BY k DESC LIMIT %s").format(t),
            "remove_range": sql.SQL("DELETE FROM {} WHERE k >= %b AND k < %b").format(t),
            "remove": sql.SQL("DELETE FROM {} WHERE k = ANY(%b)").format(t),
            "save": sql.SQL("INSERT INTO {} (k, v) SELECT * FROM unnest(%b::bytea[], %b::bytea[]) "
                            "ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v").format(t),
        }
        try:
            with self._db.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
                if schema:
                    self._db.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
                self._db.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (k BYTEA PRIMARY KEY, v BYTEA NOT NULL)")
                                 .format(t))
        except BaseException:
            self._db.close()
            raise

    def hold(self, name: str) -> bool:
        """Take the session-level advisory lock ``name`` of this store's table, on its connection: held
        until the store closes or its process dies. False (and nothing held) if another session holds it:
        ``crdtsync relay`` holds ``"relay"``, for one relay process per table (two would number one log
        each on their own).

        The lock is keyed on the table the server resolved (its OID: advisory locks belong to one
        database), not on how it was named: a store naming no schema (the search path, maybe set in the
        URL's ``options``) and one naming the schema the path leads to hold the same lock."""
        with self._lock:
            db = self._conn()
            row = db.execute("SELECT to_regclass(%s)::oid", (self._t.as_string(db),)).fetchone()
            if row is None or row[0] is None:  # (dropped since the store was opened)
                raise StoreError(self.table, "the store's table is gone (dropped since the store was opened)")
            digest = hashlib.blake2b(f"crdtsync\0{name}\0{int(row[0])}".encode(), digest_size=8)
            key = int.from_bytes(digest.digest(), "big", signed=True)
            row = db.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        return bool(row and row[0])

    def _conn(self) -> psycopg.Connection[Any]:
        if self._db is None:
            raise StoreClosed(f"the PostgreSQL store {self.table!r} is closed")
        return self._db

    def load(self, key: Key) -> bytes | None:
        kb = encode_key(key)
        with self._lock:
            row = self._conn().execute(self._sql["load"], (kb,), binary=True).fetchone()
        return None if row is None else bytes(row[0])

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
        with self._lock:
            rows = self._conn().execute(self._sql["desc" if reverse else "asc"], (lo, hi, limit),
                                        binary=True).fetchall()
        return [(decode_key(bytes(k)), bytes(v)) for k, v in rows]

    def commit(self, batch: Batch, *, notify: Iterable[tuple[str, str]] = ()) -> None:
        """Apply ``batch`` in one transaction; send each ``(channel, payload)`` of ``notify`` with it."""
        notes = list(notify)
        # Encode first: a bad key fails before the transaction starts, and changes nothing.
        ranges = [encode_key(p) for p in batch.range_removes]
        removes = [encode_key(k) for k in batch.removes]
        keys = [encode_key(k) for k in batch.saves]
        values = [bytes(v) for v in batch.saves.values()]
        with self._lock:
            db = self._conn()
            if not batch and not notes:
                return
            # One pipeline: the whole transaction costs one round trip to the server, not one per statement.
            with db.pipeline(), db.transaction():
                for lo in ranges:
                    db.execute(self._sql["remove_range"], (lo, prefix_end(lo)))
                if removes:
                    db.execute(self._sql["remove"], (removes,))
                if keys:
                    db.execute(self._sql["save"], (keys, values))
                for channel, payload in notes:
                    db.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def notify(self, channel: str, payload: str = "") -> None:
        """Send one notification now, outside any commit."""
        self.commit(Batch(), notify=[(channel, payload)])

    def listen(self, *channels: str) -> Listener:
        """A :class:`Listener` for ``channels``, on a new connection to the same database."""
        self._conn()
        return Listener(self.conninfo, channels)

    async def alisten(self, *channels: str) -> AsyncListener:
        """An :class:`AsyncListener` for ``channels``, on a new asyncio connection to the same database."""
        self._conn()
        return await AsyncListener.open(self.conninfo, channels)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class Listener:
    """Notifications on some channels, received on a connection of their own (one thread at a time).

    Use ``get(timeout)`` for one notification or None, or iterate to block for ever; ``close()`` (or
    ``with``) ends it. Notifications sent before ``listen`` returned are not received.
    """

    def __init__(self, conninfo: str, channels: Iterable[str]) -> None:
        pg = _psycopg()
        from psycopg import sql

        self.channels = tuple(channels)
        if not self.channels:
            raise ValueError("listen to at least one channel")
        self._pending: deque[Notification] = deque()
        self._db: psycopg.Connection[Any] | None = pg.connect(conninfo, autocommit=True, **_timeouts(conninfo, 10))
        for ch in self.channels:
            self._db.execute(sql.SQL("LISTEN {}").format(sql.Identifier(ch)))

    def _conn(self) -> psycopg.Connection[Any]:
        if self._db is None:
            raise StoreClosed("the listener is closed")
        return self._db

    def get(self, timeout: float | None) -> Notification | None:
        """The next notification, waiting at most ``timeout`` seconds (None: for ever); None if none came."""
        conn = self._conn()
        if not self._pending:
            # Drain psycopg's generator: it stops after the packet holding the first notification, and
            # whatever else that packet held would be lost if we left the generator early.
            self._pending.extend(Notification(n.channel, n.payload, n.pid)
                                 for n in conn.notifies(timeout=timeout, stop_after=1))
        return self._pending.popleft() if self._pending else None

    def __iter__(self) -> Iterator[Notification]:
        while True:
            n = self.get(None)
            if n is not None:
                yield n

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncListener:
    """Like :class:`Listener`, for asyncio: ``await get(timeout)``, ``async for``, ``async with``.

    Make one with ``await store.alisten(channel)`` or ``await AsyncListener.open(conninfo, channels)``.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any], channels: tuple[str, ...]) -> None:
        self._db: psycopg.AsyncConnection[Any] | None = conn
        self.channels = channels
        self._pending: deque[Notification] = deque()

    @classmethod
    async def open(cls, conninfo: str, channels: Iterable[str]) -> AsyncListener:
        pg = _psycopg()
        from psycopg import sql

        chans = tuple(channels)
        if not chans:
            raise ValueError("listen to at least one channel")
        conn = await pg.AsyncConnection.connect(conninfo, autocommit=True, **_timeouts(conninfo, 10))
        try:
            for ch in chans:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(ch)))
        except BaseException:
            await conn.close()
            raise
        return cls(conn, chans)

    def _conn(self) -> psycopg.AsyncConnection[Any]:
        if self._db is None:
            raise StoreClosed("the listener is closed")
        return self._db

    async def get(self, timeout: float | None) -> Notification | None:
        """The next notification, waiting at most ``timeout`` seconds (None: for ever); None if none came."""
        conn = self._conn()
        if not self._pending:  # drained for the reason given in Listener.get
            self._pending.extend([Notification(n.channel, n.payload, n.pid)
                                  async for n in conn.notifies(timeout=timeout, stop_after=1)])
        return self._pending.popleft() if self._pending else None

    async def __aiter__(self) -> AsyncIterator[Notification]:
        while True:
            n = await self.get(None)
            if n is not None:
                yield n

    async def aclose(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> AsyncListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
