"""``crdtsync relay --db postgresql://...``: the relay on a real PostgreSQL server, as a user starts it, with
a restart that devices continue from by delta, and a clear refusal when the server cannot be reached."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from crdtsync import Replica
from crdtsync.relay.cli import shown_db

from .conftest import BOUND, SCHEMA, client, sync

psycopg = pytest.importorskip("psycopg", reason='psycopg is not installed: pip install -e ".[postgres]"')

ROOT = Path(__file__).resolve().parents[2]


def pg_url(conninfo: str) -> str:
    """The fixture's conninfo (``host=... port=...``) as the URL a user passes to ``--db``."""
    d = psycopg.conninfo.conninfo_to_dict(conninfo)
    auth = quote(str(d.get("user", "")))
    if d.get("password"):
        auth += ":" + quote(str(d["password"]))
    host = str(d.get("host", "127.0.0.1"))
    if host.startswith("/"):
        return f"postgresql://{auth}@/{d['dbname']}?host={quote(host)}&port={d.get('port', 5432)}"
    return f"postgresql://{auth}@{host}:{d.get('port', 5432)}/{d['dbname']}"


async def start_relay(tmp_path: Path, db: str, *extra: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crdtsync", "relay", "--port", "0", "--db", db, "--schema", "schema.json", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), BOUND)).decode()
    if not line.startswith("listening on ws://"):
        assert proc.stderr is not None
        err = (await asyncio.wait_for(proc.stderr.read(), BOUND)).decode()
        await proc.wait()
        raise AssertionError(f"relay did not start: {line!r} {err}")
    return proc, line.split()[-1]


async def stop_relay(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), BOUND) == 0


async def test_a_relay_on_postgresql_syncs_and_continues_after_a_restart(
        pg_server: str, tmp_path: Path, make_replica: Callable[..., Replica]) -> None:
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA.to_dict()))
    schema = f"relay_{os.getpid()}_{id(tmp_path) & 0xFFFF}"
    db = pg_url(pg_server)
    a, b = make_replica("a"), make_replica("b")
    rid = a.create("accounts", {"name": "Acme", "notes": "hello"})
    proc, url = await start_relay(tmp_path, db, "--pg-schema", schema)
    try:
        async with client(a, url) as ca:
            assert (await sync(ca)).uploaded == 1
        async with client(b, url) as cb:
            await sync(cb)
        assert (rec := b.get("accounts", rid)) is not None and rec["notes"] == "hello"
        await stop_relay(proc)
        with psycopg.connect(pg_server) as conn:  # the relay's data is in PostgreSQL, in its schema
            [(n,)] = conn.execute(f'SELECT count(*) FROM "{schema}".kv').fetchall()
            assert n > 0
        (tmp_path / "relay.db").unlink(missing_ok=True)
        assert not (tmp_path / "relay.db").exists()  # nothing went to a SQLite file
        proc, url = await start_relay(tmp_path, db, "--pg-schema", schema)
        b.update("accounts", rid, {"notes": "hello world", "employees": 3})
        async with client(b, url) as cb:
            assert (await sync(cb)).uploaded == 1
        async with client(a, url) as ca:
            res = await sync(ca)
        assert not res.reset and res.downloaded == 1  # the same relay log: a delta, not a full resync
        rec = a.get("accounts", rid)
        assert rec is not None and (rec["notes"], rec["employees"]) == ("hello world", 3)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_an_unreachable_postgresql_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA.to_dict()))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = f"postgresql://relay:s3cretpw@127.0.0.1:{port}/relay?connect_timeout=2"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crdtsync", "relay", "--port", "0", "--db", db, "--schema", "schema.json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    out, err = await asyncio.wait_for(proc.communicate(), BOUND)
    assert proc.returncode == 1 and not out
    msg = err.decode()
    assert "cannot open the database postgresql://relay:***@127.0.0.1" in msg and "s3cretpw" not in msg


def test_urls_areshown_db_without_their_password() -> None:
    assert shown_db("postgresql://u:pw@h:5/d") == "postgresql://u:***@h:5/d"
    assert shown_db("postgresql://u@h/d") == "postgresql://u@h/d"
    assert shown_db("relay.db") == "relay.db"


async def test_a_second_relay_on_the_same_postgresql_schema_is_refused(pg_server: str, tmp_path: Path) -> None:
    """Two relays on one log would number it each on their own: a device syncing by delta through one of them
    silently missed the other's changes. The first holds the log; the second exits 1 saying why."""
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA.to_dict()))
    schema = f"relay_{os.getpid()}_{id(tmp_path) & 0xFFFF}_two"
    db = pg_url(pg_server)
    proc, _ = await start_relay(tmp_path, db, "--pg-schema", schema)
    try:
        second = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "crdtsync", "relay", "--port", "0", "--db", db, "--schema", "schema.json",
            "--pg-schema", schema, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
        out, err = await asyncio.wait_for(second.communicate(), BOUND)
        assert second.returncode == 1 and not out
        assert "another relay is using it" in err.decode() and "s3cret" not in err.decode()
        other, _ = await start_relay(tmp_path, db, "--pg-schema", schema + "_b")  # another schema: its own log
        await stop_relay(other)
        await stop_relay(proc)
        again, _ = await start_relay(tmp_path, db, "--pg-schema", schema)  # free once the first stopped
        await stop_relay(again)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
