"""A full resync under a ``where`` limit loads every record of the collection to check it (20,000 records: over
a second); the relay's event loop serves other connections meanwhile instead of waiting for the whole scan.
Real relay, real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from crdtsync import Replica
from crdtsync.relay import Grant

from .conftest import BOUND, RelayFactory, client, sync

ALL = frozenset({"*"})
GRANTS = {
    "tok-admin": Grant("admin", ALL, ALL),
    "tok-alice": Grant("alice", frozenset({"accounts"}), frozenset({"accounts"}), {"accounts": {"owner": "alice"}}),
}


async def test_other_connections_are_answered_while_a_long_scope_resync_looks_for_its_records(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], monkeypatch: pytest.MonkeyPatch) -> None:
    relay = await make_relay(GRANTS)
    assert relay.relay is not None
    lg = relay.relay.log
    lg.scope_chunk = 10  # (200 by default: a few milliseconds of work between two turns of the event loop)
    admin = make_replica("admin-pc", "admin")
    for i in range(500):
        admin.create("accounts", {"name": f"b{i}", "owner": "bob"})
    mine = admin.create("accounts", {"name": "mine", "owner": "alice"})
    async with client(admin, relay.url, token="tok-admin") as c:
        await sync(c)

    looked = 0  # records the resync has checked against alice's limit so far
    answered: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
    tasks: list[asyncio.Task[None]] = []

    async def health() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n")
        await writer.drain()
        status = await reader.readline()
        answered.set_result((looked, status))
        writer.close()

    real = lg._in_scope

    def in_scope(grant: Grant, c: str, rows: list[tuple[str, int]]) -> Any:
        nonlocal looked
        if looked == 0:  # the scan has begun: another connection asks the relay something
            tasks.append(asyncio.ensure_future(health()))
        looked += len(rows)
        return real(grant, c, rows)

    monkeypatch.setattr(lg, "_in_scope", in_scope)
    alice = make_replica("alice-phone", "alice")
    async with client(alice, relay.url, token="tok-alice") as ca:
        res = await sync(ca)
    assert res.reset and [r.id for r in alice.query("accounts")] == [mine]
    at, status = await asyncio.wait_for(answered, BOUND)
    await asyncio.wait_for(tasks[0], BOUND)
    assert status.startswith(b"HTTP/1.1 200")
    assert looked == 501
    assert 0 < at < looked  # answered while the scan was under way, not once it was over
