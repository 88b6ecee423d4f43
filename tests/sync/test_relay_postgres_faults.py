"""``crdtsync relay`` on a PostgreSQL server that fails under it: real faults on a server of the tests' own
(restarted, or frozen with SIGSTOP), a relay process as a user runs it. It must not keep serving on a
connection that is gone, nor hang on a server that does not answer: it logs CRITICAL once and exits 1, for
its supervisor to restart it, and nothing a device was not told is stored is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from pg_server import PgServer, own_server
from websockets.asyncio.client import connect

from crdtsync import Replica
from crdtsync.protocol.events import Pull
from crdtsync.relay import Limits, Relay, Tokens
from crdtsync.store.postgres import PostgresStore

from .conftest import BOUND, SCHEMA, RawClient, client, sync
from .test_relay_postgres import pg_url, start_relay

psycopg = pytest.importorskip("psycopg", reason='psycopg is not installed: pip install -e ".[postgres]"')


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PgServer]:
    """A PostgreSQL server these tests may restart and freeze (never the shared ``pg_server``)."""
    with own_server() as server:
        yield server


async def _relay(tmp_path: Path, server: PgServer, *extra: str) -> tuple[asyncio.subprocess.Process, str]:
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA.to_dict()))
    return await start_relay(tmp_path, pg_url(server.conninfo), "--pg-schema", f"r_{uuid.uuid4().hex[:12]}",
                             *extra)


async def _exit_code(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    """The relay's exit status once it exits by itself (bounded), and what it wrote on stderr."""
    assert proc.stderr is not None
    err = await asyncio.wait_for(proc.stderr.read(), BOUND)
    return await asyncio.wait_for(proc.wait(), BOUND), err.decode()


def _one_critical(err: str) -> None:
    """The failure is said once: one CRITICAL with one traceback, not one per connection."""
    assert err.count(" CRITICAL ") == 1 and err.count("Traceback") <= 1, err


@pytest.mark.parametrize("pending", [True, False], ids=["pushing", "pulling"])
async def test_a_relay_whose_postgresql_restarted_exits_at_its_next_connection(
        own_pg: PgServer, tmp_path: Path, make_replica: Callable[..., Replica], pending: bool) -> None:
    """The relay held its connection across the restart, broken: it kept running, /health said okay, and
    every device was refused with 1011 and a traceback logged, for ever (only a failed commit stopped it).
    A device connecting (with changes to push, or only pulling) now makes it stop and exit 1."""
    a = make_replica("a")
    a.create("accounts", {"name": "Acme"})
    proc, url = await _relay(tmp_path, own_pg)
    try:
        async with client(a, url) as c:
            await sync(c)
        await asyncio.to_thread(own_pg.restart)
        if pending:
            a.create("accounts", {"name": "Bolt"})
        async with client(a, url) as c:
            syncing = asyncio.ensure_future(c.sync_now())
            code, err = await _exit_code(proc)
            assert not syncing.done()  # (offline now: it waits for a relay)
            syncing.cancel()
        assert code == 1, err
        _one_critical(err)
        assert "crdtsync relay: the store failed, stopped" in err
        assert [p.status for p in a.pending()] == (["pending"] if pending else [])  # nothing lost
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_an_idle_relay_whose_postgresql_restarted_stops_by_itself(own_pg: PgServer) -> None:
    """With no device connecting, it said "okay" to health checks on a broken connection for as long as
    none came; its periodic check of the store (``Limits.store_check``) stops it now."""
    store = PostgresStore(own_pg.conninfo, schema=f"r_{uuid.uuid4().hex[:12]}")
    relay = Relay(store, SCHEMA, Tokens(None), limits=Limits(store_check=0.05))
    try:
        await relay.start("127.0.0.1", 0)
        await asyncio.to_thread(own_pg.restart)
        await asyncio.wait_for(relay.wait_stopped(), BOUND)
        assert isinstance(relay.failure, psycopg.OperationalError)
    finally:
        await relay.stop()
        store.close()


async def test_a_pull_that_finds_the_connection_gone_stops_the_relay(own_pg: PgServer, tmp_path: Path) -> None:
    """A device welcomed before the restart pulls after it: the pull's read fails (it closed only that
    connection, with 1011 and a traceback); the relay stops and exits 1."""
    proc, url = await _relay(tmp_path, own_pg)
    try:
        async with connect(url, open_timeout=BOUND) as ws:
            raw = RawClient(ws)
            await raw.handshake("b")
            await asyncio.to_thread(own_pg.restart)
            raw.conn.send(Pull(1, 0))
            await raw.flush()
            code, err = await _exit_code(proc)
            await asyncio.wait_for(ws.wait_closed(), BOUND)
            assert ws.close_code == 1011
        assert code == 1, err
        _one_critical(err)
        assert "serving a pull to b failed" in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_relay_whose_postgresql_hangs_exits_after_the_store_timeout(
        own_pg: PgServer, tmp_path: Path, make_replica: Callable[..., Replica]) -> None:
    """PostgreSQL frozen (SIGSTOP on the postmaster and its backends: a hung server) froze the relay: no
    health check, no log line, no SIGTERM answered, for as long as the server hung. A store call that has
    not returned after ``--store-timeout`` seconds now makes it log CRITICAL and exit 1."""
    a = make_replica("a")
    a.create("accounts", {"name": "Acme"})
    proc, url = await _relay(tmp_path, own_pg, "--store-timeout", "1")
    frozen: list[int] = []
    try:
        async with client(a, url) as c:
            await sync(c)
            frozen = own_pg.processes()
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            a.create("accounts", {"name": "Bolt"})
            syncing = asyncio.ensure_future(c.sync_now())
            t0 = time.monotonic()
            code, err = await _exit_code(proc)
            took = time.monotonic() - t0
            syncing.cancel()
        assert code == 1, err
        assert err.count(" CRITICAL ") == 1 and "crdtsync relay: the store has not answered a" in err, err
        assert 1.0 <= took < 1.0 + BOUND / 4, took  # the limit, plus the watch's period and the exit
        assert [p.status for p in a.pending()] == ["pending"]  # not acknowledged: sent again later
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
