"""Fixtures for sync tests: real relays on 127.0.0.1 (ephemeral ports), real SQLite files, real websockets.

Nothing here sleeps to wait: tests await status events or futures, each bounded by ``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from crdtsync import Replica, SQLiteStore, SyncClient
from crdtsync.client import Backoff, SyncStatus
from crdtsync.protocol import Connection, Event, Hello, Role, Welcome
from crdtsync.relay import Grant, Limits, Relay, Tokens
from crdtsync.schema import Collection, Counter, Int, Ref, Schema, Set, Str, Text

SCHEMA = Schema(
    Collection("accounts", {"name": Str(required=True, max_length=120), "owner": Str(), "employees": Int(min=0),
                            "phone": Str(), "notes": Text(), "tags": Set(Str()), "visits": Counter(),
                            "parent": Ref("accounts")}),
    Collection("contacts", {"name": Str(required=True), "email": Str(), "account": Ref("accounts")},
               delete_policy="delete-wins"),
    Collection("secrets", {"name": Str(required=True)}),
)

BOUND = 20.0  # seconds any awaited event may take before the test fails


def fast_backoff() -> Backoff:
    return Backoff(base=0.02, factor=2.0, cap=0.2)


class RelayHandle:
    """An in-process relay that can be stopped and started again on the same port and database."""

    def __init__(self, path: Path, tokens: Tokens, limits: Limits, keep_log: int) -> None:
        self.path = path
        self.tokens = tokens
        self.limits = limits
        self.keep_log = keep_log
        self.port = 0
        self.relay: Relay | None = None
        self.store: SQLiteStore | None = None

    async def start(self) -> Relay:
        self.store = SQLiteStore(self.path, synchronous="NORMAL")
        self.relay = Relay(self.store, SCHEMA, self.tokens, limits=self.limits, keep_log=self.keep_log)
        _, self.port = await self.relay.start("127.0.0.1", self.port)
        return self.relay

    async def stop(self) -> None:
        if self.relay is not None:
            await self.relay.stop()
            self.relay = None
        if self.store is not None:
            self.store.close()
            self.store = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


RelayFactory = Callable[..., Awaitable[RelayHandle]]


@pytest.fixture
async def make_relay(tmp_path: Path) -> AsyncIterator[RelayFactory]:
    handles: list[RelayHandle] = []

    async def make(grants: dict[str, Grant] | None = None, *, limits: Limits | None = None,
                   keep_log: int = 100_000, name: str = "relay.db") -> RelayHandle:
        h = RelayHandle(tmp_path / name, Tokens(grants), limits or Limits(), keep_log)
        await h.start()
        handles.append(h)
        return h

    yield make
    for h in handles:
        await h.stop()


@pytest.fixture
def make_replica(tmp_path: Path) -> Callable[..., Replica]:
    opened: list[Replica] = []

    def make(device: str, user: str = "u") -> Replica:
        r = Replica.open(tmp_path / f"{device}.db", SCHEMA, device=device, user=user, synchronous="NORMAL")
        opened.append(r)
        return r

    yield make  # type: ignore[misc]
    for r in opened:
        r.close()


class Watch:
    """Collects a client's status events and lets a test await one that matches."""

    def __init__(self, client: SyncClient) -> None:
        self.events: list[SyncStatus] = []
        self._waiters: list[tuple[Callable[[SyncStatus], bool], asyncio.Future[SyncStatus]]] = []
        client.subscribe(self._on)

    def _on(self, st: SyncStatus) -> None:
        self.events.append(st)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(st):
                fut.set_result(st)

    async def wait(self, pred: Callable[[SyncStatus], bool], *, past: bool = False) -> SyncStatus:
        if past:
            for st in self.events:
                if pred(st):
                    return st
        fut: asyncio.Future[SyncStatus] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        return await asyncio.wait_for(fut, BOUND)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def client(replica: Replica, url: str, token: str | None = None, **kw: Any) -> SyncClient:
    kw.setdefault("backoff", fast_backoff())
    return SyncClient(replica, url, token=token, **kw)


async def sync(c: SyncClient, collections: list[str] | None = None) -> Any:
    return await asyncio.wait_for(c.sync_now(collections), BOUND)


def snapshot(r: Replica) -> dict[str, Any]:
    """Everything a user sees of the replica's records, for comparing devices."""
    out: dict[str, Any] = {}
    for coll in SCHEMA:
        for rec in r.query(coll.name, include_deleted=True):
            out[f"{coll.name}/{rec.id}"] = (rec.fields, rec.deleted, rec.conflicts)
    return out


class RawClient:
    """A hand-driven protocol client on a real websocket, for tests that must send what SyncClient won't."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.conn = Connection(Role.CLIENT)

    async def flush(self) -> None:
        for data in self.conn.data_to_send():
            await self.ws.send(data)

    async def handshake(self, device: str) -> Welcome:
        self.conn.send(Hello(device))
        await self.flush()
        [ev] = await self.next_events()
        assert isinstance(ev, Welcome), ev
        return ev

    async def next_events(self) -> list[Event]:
        while True:
            self.conn.receive_data(await asyncio.wait_for(self.ws.recv(), BOUND))
            evs = self.conn.events_received()
            if evs:
                return evs
