"""Fixtures for sync tests: real relays on 127.0.0.1 (ephemeral ports), real SQLite files, real websockets.

Nothing here sleeps to wait: tests await status events or futures, each bounded by ``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from crdtsync import Replica, SQLiteStore, SyncClient
from crdtsync.client import Backoff, SyncStatus
from crdtsync.protocol import Connection, Event, Hello, Role, Welcome
from crdtsync.protocol.frames import Kind, decode_parts
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

    def __init__(self, path: Path, tokens: Tokens, limits: Limits, keep_log: int,
                 max_connections: int | None = None) -> None:
        self.path = path
        self.max_connections = max_connections
        self.tokens = tokens
        self.limits = limits
        self.keep_log = keep_log
        self.port = 0
        self.relay: Relay | None = None
        self.store: SQLiteStore | None = None

    async def start(self) -> Relay:
        self.store = SQLiteStore(self.path, synchronous="NORMAL")
        self.relay = Relay(self.store, SCHEMA, self.tokens, limits=self.limits, keep_log=self.keep_log,
                           max_connections=self.max_connections)
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
                   keep_log: int = 100_000, name: str = "relay.db", max_connections: int | None = None
                   ) -> RelayHandle:
        h = RelayHandle(tmp_path / name, Tokens(grants), limits or Limits(), keep_log, max_connections)
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


class HoldingProxy:
    """A TCP proxy on 127.0.0.1 between a client (one connection at a time) and a relay that can hold what
    the relay sends and release it in one write, as a network that delivers a burst at once: the client then
    reads every frame of it before any of its other tasks runs (a timing a real relay only meets under load).

    ``hold()`` starts holding the relay's bytes; ``seen(pred)`` waits until a held frame (kind, header)
    matches; ``release()`` writes what is held and passes everything through again."""

    def __init__(self, relay_port: int) -> None:
        self.relay_port = relay_port
        self.port = 0
        self.held: bytearray | None = None
        self.frames: list[tuple[Kind, dict[str, Any]]] = []  # those held, decoded
        self._waiters: list[tuple[Callable[[Kind, dict[str, Any]], bool], asyncio.Future[None]]] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._down: asyncio.StreamWriter | None = None  # to the client (one connection at a time)

    async def start(self) -> HoldingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
            with contextlib.suppress(BaseException):
                await t

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def hold(self) -> None:
        if self.held is None:
            self.held = bytearray()

    def release(self) -> None:
        held, self.held = self.held, None
        if held and self._down is not None:
            self._down.write(bytes(held))

    async def seen(self, pred: Callable[[Kind, dict[str, Any]], bool]) -> None:
        if any(pred(k, h) for k, h in self.frames):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        await asyncio.wait_for(fut, BOUND)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.relay_port)
        self._writers += [writer, up_writer]
        self._down = writer
        for t in (self._pump(reader, up_writer), self._pump_down(up_reader, writer)):
            task = asyncio.create_task(t)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
        writer.close()

    async def _pump_down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()  # the relay's bytes not parsed yet: HTTP response, then websocket frames
        handshake = True
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if self.held is not None:
                    self.held += data
                else:
                    writer.write(data)
                buf += data
                if handshake:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    del buf[:end + 4]
                    handshake = False
                while (frame := _ws_frame(buf)) is not None:
                    if self.held is not None and frame[0] == 2:  # a binary message: a crdtsync frame
                        kind, header, _ = decode_parts(frame[1])
                        self.frames.append((kind, header))
                        for pred, fut in self._waiters:
                            if not fut.done() and pred(kind, header):
                                fut.set_result(None)
        writer.close()


def _ws_frame(buf: bytearray) -> tuple[int, bytes] | None:
    """Take one unmasked websocket frame (opcode, payload) off the front of ``buf``, if it is all there."""
    if len(buf) < 2:
        return None
    n, pos = buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, pos = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, pos = int.from_bytes(buf[2:10], "big"), 10
    if len(buf) < pos + n:
        return None
    frame = (buf[0] & 0x0F, bytes(buf[pos:pos + n]))
    del buf[:pos + n]
    return frame


ProxyFactory = Callable[[int], Awaitable[HoldingProxy]]


@pytest.fixture
async def make_proxy() -> AsyncIterator[ProxyFactory]:
    proxies: list[HoldingProxy] = []

    async def make(relay_port: int) -> HoldingProxy:
        proxies.append(await HoldingProxy(relay_port).start())
        return proxies[-1]

    yield make
    for p in proxies:
        await p.stop()


async def start_and_stop_cli_relay(cwd: Path, *options: str, preexec_fn: Callable[[], None] | None = None) -> str:
    """Run ``crdtsync relay`` (on a free port, ``relay.db`` in ``cwd``, the tests' schema, ``options``) until
    it says it listens, stop it with SIGTERM, check it exits 0; return what it wrote to stderr."""
    root = Path(__file__).resolve().parents[2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crdtsync", "relay", "--port", "0", "--db", "relay.db", "--schema",
        "tests.sync.conftest:SCHEMA", *options, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=cwd, env=dict(os.environ, PYTHONPATH=str(root)), preexec_fn=preexec_fn)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), BOUND)).decode()
        assert line.startswith("listening on ws://127.0.0.1:"), line + (await proc.stderr.read()).decode()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), BOUND) == 0
        return (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
