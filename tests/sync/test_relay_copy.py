"""``crdtsync relay-copy``: moving a relay to another database. A relay started on an empty PostgreSQL
database instead of its SQLite file was a new relay: a fresh device saw only what was pushed since, and an
offline device's changes of records it had synced were held forever. Copied, it is the same relay: devices
continue by delta, pending changes go in, a fresh device sees everything; and back to SQLite alike."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from crdtsync import LocalError, Replica, StoreError
from crdtsync.cli import main
from crdtsync.relay.transfer import copy_relay_store
from crdtsync.store import Batch, MemoryStore, SQLiteStore
from crdtsync.store.keys import Key

from .conftest import SCHEMA, client, sync


def _relay_store(n: int = 20) -> MemoryStore:
    """A store holding what a relay's log looks like: its id, head, and ``n`` log entries and records."""
    store = MemoryStore()
    batch = Batch()
    batch.save(("relay", "id"), b"log-1")
    batch.save(("relay", "head"), str(n).encode())
    for i in range(1, n + 1):
        batch.save(("log", i), b"entry %d" % i)
        batch.save(("rec", "accounts", f"r{i}"), b"update %d" % i)
    store.commit(batch)
    return store


class _Recording(MemoryStore):
    """A memory store that notes the size of every page read from it and every commit made to it, and can
    fail or drop a key in a commit, as a store that fails halfway or loses a write."""

    def __init__(self, *, fail_at: int | None = None, drop: Key | None = None) -> None:
        super().__init__()
        self.reads: list[int | None] = []
        self.commits: list[int] = []
        self.fail_at, self.drop = fail_at, drop

    def load_range(self, prefix: Key, *, start: Key | None = None, limit: int | None = None,
                   reverse: bool = False) -> list[tuple[Key, bytes]]:
        self.reads.append(limit)
        return super().load_range(prefix, start=start, limit=limit, reverse=reverse)

    def commit(self, batch: Batch) -> None:
        if self.fail_at is not None and len(self.commits) == self.fail_at:
            self.fail_at = None  # once
            raise OSError("the disk went away")
        if self.drop is not None:
            batch.saves.pop(self.drop, None)
        self.commits.append(len(batch.saves))
        super().commit(batch)


def test_the_copy_goes_in_pages_and_is_checked() -> None:
    src = _relay_store(20)
    source = _Recording()
    source.commit(Batch(saves=dict(src.load_range(()))))
    source.reads.clear()
    dst = _Recording()
    copied = copy_relay_store(source, dst, page=5)
    assert (copied.keys, copied.head) == (42, 20)
    assert dst.load_range(()) == src.load_range(())
    assert dst.commits and max(dst.commits) <= 5  # a page a commit
    assert source.reads and all(r is not None and r <= 6 for r in source.reads)  # never the whole log at once


def test_a_copy_that_fails_or_does_not_match_leaves_the_destination_empty() -> None:
    src = _relay_store(20)
    failing = _Recording(fail_at=3)
    with pytest.raises(OSError, match="went away"):
        copy_relay_store(src, failing, page=5)
    assert failing.load_range(()) == []
    lossy = _Recording(drop=("log", 7))  # the destination loses one key without a word
    with pytest.raises(StoreError, match="does not match its source: 41 keys for 42"):
        copy_relay_store(src, lossy, page=5)
    assert lossy.load_range(()) == []


def test_a_copy_refuses_what_is_not_a_relay_and_a_destination_in_use() -> None:
    phone = Replica(MemoryStore(), SCHEMA, device="phone", user="u")
    phone.create("accounts", {"name": "Acme"})
    with pytest.raises(LocalError, match="device's replica"):
        copy_relay_store(phone.store, MemoryStore())
    with pytest.raises(LocalError, match="holds no relay"):
        copy_relay_store(MemoryStore(), MemoryStore())
    taken = _relay_store(1)
    with pytest.raises(LocalError, match="destination is not empty"):
        copy_relay_store(_relay_store(3), taken)
    assert taken.load_range(()) == _relay_store(1).load_range(())  # untouched


def test_the_command_refuses_with_status_2_and_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    phone = Replica.open(tmp_path / "phone.db", SCHEMA, device="phone", user="u")
    phone.create("accounts", {"name": "Acme"})
    phone.close()
    relay = SQLiteStore(tmp_path / "relay.db")
    relay.commit(Batch(saves=dict(_relay_store(3).load_range(()))))
    relay.close()
    cases = [
        (["mysql://x/y", "out.db"], "unknown database URL scheme mysql://"),
        (["missing.db", "out.db"], "no relay database missing.db: no such file"),
        (["relay.db", "phone.db"], "phone.db exists: copy into a new SQLite file"),
        (["relay.db", "./relay.db"], "./relay.db exists"),
        (["phone.db", "out.db"], "the source holds a device's replica"),
        (["relay.db", "out.db", "--to-pg-schema", "s"], "--to-pg-schema is for a PostgreSQL database"),
    ]
    monkeypatch.chdir(tmp_path)
    for argv, said in cases:
        assert main(["relay-copy", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "out.db").exists()  # (a refused copy made no file)
    assert main(["relay-copy", "relay.db", "out.db"]) == 0
    assert "copied 8 keys (log head 3)" in capsys.readouterr().out
    out = SQLiteStore(tmp_path / "out.db")
    try:
        assert out.load_range(()) == _relay_store(3).load_range(())
    finally:
        out.close()


async def test_devices_continue_by_delta_after_the_relay_moved_to_postgresql_and_back(
        pg_server: str, tmp_path: Path, make_replica: Callable[..., Replica], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("psycopg", reason='psycopg is not installed: pip install -e ".[postgres]"')
    from .test_relay_postgres import pg_url, start_relay, stop_relay
    monkeypatch.chdir(tmp_path)
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA.to_dict()))
    pg = pg_url(pg_server)
    schema = f"moved_{os.getpid()}_{id(tmp_path) & 0xFFFF}"
    a, b = make_replica("a"), make_replica("b")
    ids = [a.create("accounts", {"name": f"acct {i}"}) for i in range(5)]
    proc, url = await start_relay(tmp_path, "relay.db")
    try:
        async with client(a, url) as ca:
            assert (await sync(ca)).uploaded == 5
        async with client(b, url) as cb:
            assert (await sync(cb)).received == 5
    finally:
        await stop_relay(proc)
    a.update("accounts", ids[0], {"name": "renamed offline"})  # builds on what the relay holds
    a.create("accounts", {"name": "made offline"})

    assert main(["relay-copy", "relay.db", pg, "--to-pg-schema", schema]) == 0
    assert "copied " in capsys.readouterr().out
    proc, url = await start_relay(tmp_path, pg, "--pg-schema", schema)
    try:
        async with client(b, url) as cb:
            got = await sync(cb)
            assert (got.reset, got.received) == (False, 0)  # by delta from its cursor: nothing new
        async with client(a, url) as ca:
            got = await sync(ca)
            assert (got.uploaded, got.held, got.reset) == (2, 0, False) and a.pending() == []
        async with client(b, url) as cb:
            got = await sync(cb)
            assert (got.reset, got.received) == (False, 2)
        fresh = make_replica("fresh")
        async with client(fresh, url) as cf:
            await sync(cf)
        assert sorted(r["name"] for r in fresh.query("accounts")) == \
            sorted(["renamed offline", "made offline"] + [f"acct {i}" for i in range(1, 5)])
    finally:
        await stop_relay(proc)

    b.update("accounts", ids[1], {"name": "renamed on b"})
    assert main(["relay-copy", pg, "back.db", "--from-pg-schema", schema]) == 0
    proc, url = await start_relay(tmp_path, "back.db")
    try:
        async with client(b, url) as cb:
            got = await sync(cb)
            assert (got.uploaded, got.held, got.reset) == (1, 0, False)
        async with client(a, url) as ca:
            got = await sync(ca)
            assert (got.reset, got.received) == (False, 1)
        assert (rec := a.get("accounts", ids[1])) is not None and rec["name"] == "renamed on b"
    finally:
        await stop_relay(proc)
