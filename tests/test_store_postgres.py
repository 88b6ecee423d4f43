"""PostgresStore passes the shared byte store suite on a real server, and its LISTEN/NOTIFY works."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid

import pytest

from crdtsync import Collection, Int, Replica, Schema, StoreClosed, Str
from crdtsync.store import Batch, EncryptedStore
from crdtsync.store.conformance import ByteStoreConformance, StoreFactory
from crdtsync.store.postgres import PostgresStore

psycopg = pytest.importorskip("psycopg", reason='psycopg is not installed: pip install -e ".[postgres]"')


@pytest.fixture
def schema() -> str:
    """A schema of its own for each test, so tests share one database and nothing else."""
    return f"t_{uuid.uuid4().hex[:12]}"


class TestPostgresStore(ByteStoreConformance):
    @pytest.fixture
    def store_factory(self, pg_server: str, schema: str) -> StoreFactory:
        return StoreFactory(lambda name: PostgresStore(pg_server, schema=schema, table=name), persistent=True,
                            thread_safe=True)


class TestEncryptedPostgresStore(ByteStoreConformance):
    @pytest.fixture
    def store_factory(self, pg_server: str, schema: str) -> StoreFactory:
        return StoreFactory(lambda name: EncryptedStore(PostgresStore(pg_server, schema=schema, table=name),
                                                        bytes(32)), persistent=True, thread_safe=True)


def _huge_key() -> tuple[str, str]:
    """A key too large for a btree index entry: the server refuses it, mid-transaction."""
    return ("huge", os.urandom(8000).hex())


def test_a_commit_the_server_refuses_changes_nothing(pg_server: str, schema: str) -> None:
    s = PostgresStore(pg_server, schema=schema)
    try:
        s.save(("kept",), b"1")
        b = Batch()
        b.remove_range(())
        b.save(("new",), b"2")
        b.save(_huge_key(), b"3")
        with pytest.raises(psycopg.Error):
            s.commit(b)
        assert s.load_range(()) == [(("kept",), b"1")]
        s.save(("after",), b"4")  # the store is still usable
        assert [k for k, _ in s.load_range(())] == [("after",), ("kept",)]
    finally:
        s.close()


def test_stores_on_one_table_share_data_and_open_concurrently(pg_server: str, schema: str) -> None:
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(PostgresStore(pg_server, schema=schema, table="shared"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == [] and len(stores) == 4
        stores[0].save(("from", 0), b"x")
        assert all(s.load(("from", 0)) == b"x" for s in stores)
        other = PostgresStore(pg_server, schema=schema, table="other")
        assert other.load_range(()) == []
        other.close()
    finally:
        for s in stores:
            s.close()


def test_notify_arrives_with_the_commit_and_not_without_it(pg_server: str, schema: str) -> None:
    writer = PostgresStore(pg_server, schema=schema)
    reader = PostgresStore(pg_server, schema=schema)
    listener = reader.listen("relay", "other")
    try:
        b = Batch()
        b.save(("upd", "accounts", "a1", 1), b"update")
        writer.commit(b, notify=[("relay", "accounts/a1")])
        n = listener.get(timeout=10)
        assert n is not None and (n.channel, n.payload) == ("relay", "accounts/a1")
        assert reader.load(("upd", "accounts", "a1", 1)) == b"update"  # the data is there when told

        bad = Batch()
        bad.save(_huge_key(), b"x")
        with pytest.raises(psycopg.Error):
            writer.commit(bad, notify=[("relay", "refused")])
        writer.notify("other", "after")
        # One session's notifications arrive in commit order: had the refused one been sent, it came first.
        n = listener.get(timeout=10)
        assert n is not None and (n.channel, n.payload) == ("other", "after")
    finally:
        listener.close()
        writer.close()
        reader.close()


def test_listener_and_closed_store(pg_server: str, schema: str) -> None:
    s = PostgresStore(pg_server, schema=schema)
    with s.listen("ch") as listener:
        s.notify("ch", "é" * 10)
        got = next(iter(listener))
        assert got.payload == "é" * 10 and got.channel == "ch"
        # Several notifications in one packet: none may be lost between two get() calls.
        s.commit(Batch(), notify=[("ch", str(i)) for i in range(5)])
        assert [n.payload for n in (listener.get(timeout=10) for _ in range(5)) if n] == ["0", "1", "2", "3", "4"]
    with pytest.raises(StoreClosed):
        listener.get(timeout=0)
    with pytest.raises(ValueError):
        s.listen()
    s.close()
    with pytest.raises(StoreClosed):
        s.listen("ch")
    with pytest.raises(StoreClosed):
        s.notify("ch")


async def test_async_listener_hears_two_relays(pg_server: str, schema: str) -> None:
    """Two relay processes on one database: what one commits, the other hears of and can read."""
    relay_a = PostgresStore(pg_server, schema=schema)
    relay_b = PostgresStore(pg_server, schema=schema)
    try:
        async with await relay_b.alisten("fanout") as heard:
            for i in range(3):
                b = Batch()
                b.save(("upd", "accounts", "a1", i), f"u{i}".encode())
                relay_a.commit(b, notify=[("fanout", f"accounts/a1/{i}")])
            got = [await asyncio.wait_for(heard.get(timeout=10), 15) for _ in range(3)]
            assert [n.payload if n else None for n in got] == [f"accounts/a1/{i}" for i in range(3)]
            assert [v for _, v in relay_b.load_range(("upd", "accounts", "a1"))] == [b"u0", b"u1", b"u2"]
            relay_a.notify("fanout", "last")
            async for n in heard:
                assert n.payload == "last"
                break
        with pytest.raises(StoreClosed):
            await heard.get(timeout=0)
    finally:
        relay_a.close()
        relay_b.close()


def test_a_replica_runs_on_postgres(pg_server: str, schema: str) -> None:
    sch = Schema(Collection("accounts", {"name": Str(required=True), "employees": Int()}))
    r = Replica(PostgresStore(pg_server, schema=schema), sch, device="relay-test", user="alice")
    rid = r.create("accounts", {"name": "Acme"})
    r.update("accounts", rid, {"employees": 12})
    r.close()
    r = Replica(PostgresStore(pg_server, schema=schema), sch, device="relay-test", user="alice")
    try:
        rec = r.get("accounts", rid)
        assert rec is not None and rec.fields == {"name": "Acme", "employees": 12}
        assert len(r.pending()) == 2
    finally:
        r.close()


def test_the_relay_lock_is_the_tables_however_it_is_named(pg_server: str, schema: str) -> None:
    """``hold`` was keyed on the schema option as given: a store naming no schema (its search path set in
    the URL's options) and one naming the schema that path leads to both held "the" relay lock on one table,
    and two relays numbered one log each on their own, overwriting each other's entries."""
    named = PostgresStore(pg_server, schema=schema)
    by_path = PostgresStore(f"{pg_server} options='-c search_path={schema}'")
    other = PostgresStore(pg_server, schema=schema, table="kv2")
    try:
        assert named.hold("relay")
        assert not by_path.hold("relay")  # the same table: held already
        assert by_path.hold("other")  # (another name, another lock)
        assert other.hold("relay")  # another table: its own lock
    finally:
        for s in (named, by_path, other):
            s.close()


def test_connections_have_keepalives_and_a_tcp_user_timeout_unless_told_otherwise(pg_server: str) -> None:
    """Without keepalives nor ``tcp_user_timeout`` a server gone from the network (a partition that drops
    packets) left a query waiting for ever; what the conninfo sets is kept."""
    plain = PostgresStore(pg_server)
    told = PostgresStore(f"{pg_server} keepalives_idle=60")
    listener = plain.listen("ch")
    try:
        for conn, idle in ((plain._db, "10"), (told._db, "60"), (listener._db, "10")):
            assert conn is not None
            params = conn.info.get_parameters()
            assert (params.get("keepalives"), params.get("keepalives_idle")) == ("1", idle), params
            assert (params.get("keepalives_interval"), params.get("keepalives_count")) == ("5", "3"), params
            assert params.get("tcp_user_timeout") == "30000", params
    finally:
        listener.close()
        plain.close()
        told.close()
