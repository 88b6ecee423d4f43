"""Who gets into the relay and how fast: a device connection that never says HELLO is closed, connections
over the cap are refused at the handshake (503) while the others and the health check keep working, and a
Yjs client is held to the same rate limit as a device."""

from __future__ import annotations

import asyncio
import logging
import resource
from pathlib import Path

import pytest
from pycrdt import Doc
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from crdtsync.protocol import Changes, Pull
from crdtsync.protocol.ywebsocket import (
    MESSAGE_AWARENESS,
    MESSAGE_SYNC,
    SYNC_STEP1,
    SYNC_STEP2,
    AwarenessEntry,
    Reader,
    awareness_message,
    decode_awareness,
    sync_message,
)
from crdtsync.relay import Grant, Limits, Relay, Tokens
from crdtsync.relay.admission import AcceptErrors, default_max_connections
from crdtsync.relay.yjs import YjsRooms
from crdtsync.schema import Schema
from crdtsync.store.memory import MemoryStore

from .conftest import BOUND, RawClient, RelayFactory, start_and_stop_cli_relay

GRANTS = {"t": Grant("alice", read=frozenset({"accounts"}), rooms=frozenset({"*"}))}
AUTH = {"Authorization": "Bearer t"}


async def _device_works(raw: RawClient, pull: int) -> None:
    raw.conn.send(Pull(pull, 0))
    await raw.flush()
    [ev] = await raw.next_events()
    assert isinstance(ev, Changes)


async def _room_works(ws: ClientConnection) -> None:
    """A Yjs client's sync step 1 is answered with step 2."""
    await ws.send(sync_message(SYNC_STEP1, Doc().get_state()))
    while (await asyncio.wait_for(ws.recv(), BOUND))[:2] != bytes([MESSAGE_SYNC, SYNC_STEP2]):
        pass


async def _health(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status = await asyncio.wait_for(reader.readline(), BOUND)
    writer.close()
    return status


async def test_a_device_connection_that_sends_no_hello_is_closed_within_the_bound(
        make_relay: RelayFactory, caplog: pytest.LogCaptureFixture) -> None:
    """One opened with a valid token and then silent stayed open for ever (its client library answers the
    pings): 241 of them under ``ulimit -n 256`` locked real devices and health checks out. A device that said
    HELLO, and a Yjs client that sends nothing (it may just be reading its room), stay."""
    caplog.set_level(logging.INFO, logger="crdtsync.relay")
    relay = await make_relay(GRANTS, limits=Limits(hello_timeout=0.2))
    async with connect(relay.url + "/yjs/r?token=t") as room, connect(relay.url, additional_headers=AUTH) as dev, \
            connect(relay.url, additional_headers=AUTH) as idle:
        raw = RawClient(dev)
        await raw.handshake("d1")
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(idle.recv(), BOUND)
        assert (idle.close_code, idle.close_reason) == (4408, "no HELLO within 0.2 s of opening")
        await _device_works(raw, 1)
        await _room_works(room)
    said = [r for r in caplog.records if "no HELLO" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING


async def test_over_the_cap_a_connection_gets_503_and_the_others_keep_working(
        make_relay: RelayFactory, caplog: pytest.LogCaptureFixture) -> None:
    """Devices and Yjs clients count against one cap; one over it is refused at its handshake, logged once
    for many refusals; health checks are answered; once a connection leaves, a new one gets in."""
    caplog.set_level(logging.WARNING, logger="crdtsync.relay")
    relay = await make_relay(GRANTS, max_connections=2)
    assert relay.relay is not None
    assert isinstance(asyncio.get_running_loop().get_exception_handler(), AcceptErrors)
    async with connect(relay.url, additional_headers=AUTH) as dev, connect(relay.url + "/yjs/r?token=t") as room:
        raw = RawClient(dev)
        await raw.handshake("d1")
        for url in (relay.url, relay.url + "/yjs/r?token=t", relay.url):
            with pytest.raises(InvalidStatus) as e:
                await asyncio.wait_for(connect(url, additional_headers=AUTH), BOUND)
            assert e.value.response.status_code == 503
            assert b"limit of 2 connections; try again later" in e.value.response.body
        assert (await _health(relay.port)).startswith(b"HTTP/1.1 200")
        await _device_works(raw, 1)
        await _room_works(room)
        [served] = [c for c in relay.relay.connections.open if c.remote_address == room.local_address]
        await room.close()
        await asyncio.wait_for(served.wait_closed(), BOUND)
        async with connect(relay.url, additional_headers=AUTH) as again:
            await RawClient(again).handshake("d2")
        await _device_works(raw, 2)
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused")]
    assert len(refusals) == 1 and "refused 1 connection(s): 2 open" in refusals[0].getMessage()
    assert relay.relay.connections.refused == 3


async def test_a_yjs_client_over_the_rate_limit_is_slowed_down_not_dropped(
        make_relay: RelayFactory, caplog: pytest.LogCaptureFixture) -> None:
    """``--rate`` held devices only: one Yjs connection sent 20,869 awareness frames a second, fanned out to
    every reader of its room. At 100 frames a second in bursts of 10, 60 frames take at least half a second
    to get through, and all of them do."""
    caplog.set_level(logging.WARNING, logger="crdtsync.relay.yjs")
    relay = await make_relay(GRANTS, limits=Limits(rate=100, burst=10))
    url = relay.url + "/yjs/flood?token=t"
    seen: set[int] = set()
    async with connect(url) as reader, connect(url, max_queue=None) as writer:  # (it reads none of its echoes)

        async def read() -> None:
            async for m in reader:
                assert isinstance(m, bytes)
                r = Reader(m, "message")
                if r.var_uint() == MESSAGE_AWARENESS:
                    seen.update(e.clock for e in decode_awareness(r.var_bytes()) if e.client == 4242)
                    if len(seen) == 60:
                        return

        reading = asyncio.ensure_future(read())
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(60):
            await writer.send(awareness_message([AwarenessEntry(4242, i + 1, f'{{"cursor": {i}}}')]))
        await asyncio.wait_for(reading, BOUND)
        elapsed = loop.time() - t0
    assert seen == set(range(1, 61))
    assert elapsed >= 0.8 * (60 - 10) / 100, elapsed
    assert sum("over the rate limit" in r.getMessage() for r in caplog.records) == 1


def test_accept_errors_are_a_log_line_a_minute_not_a_traceback_each(caplog: pytest.LogCaptureFixture) -> None:
    """asyncio logged "socket.accept() out of system resource" with a traceback for every failed accept:
    481,699 of them (214 MB) in 90 s. Other errors still reach the handler that was there before."""
    now = [0.0]
    passed: list[dict[str, object]] = []
    handler = AcceptErrors(lambda loop, context: passed.append(context), clock=lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        full = {"message": AcceptErrors.MESSAGE, "exception": OSError(24, "Too many open files")}
        for _ in range(100):
            handler(loop, full)
        now[0] = 61.0
        handler(loop, full)
        handler(loop, {"message": "something else"})
    finally:
        loop.close()
    said = [r.getMessage() for r in caplog.records if "accept() failed" in r.getMessage()]
    assert [m.split(":")[0] for m in said] == ["accept() failed 1 time(s)", "accept() failed 100 time(s)"]
    assert "Too many open files" in said[0] and handler.count == 101
    assert passed == [{"message": "something else"}]


def test_embedding_gets_the_default_cap_and_the_relay_shares_it_with_its_rooms() -> None:
    store = MemoryStore()
    relay = Relay(store, Schema(), Tokens(None))
    assert relay.connections.limit == default_max_connections() == YjsRooms(store).connections.limit
    assert relay.rooms.connections is relay.connections
    assert Relay(store, Schema(), Tokens(None), max_connections=3).connections.limit == 3
    assert default_max_connections(256) == 192 and default_max_connections(100_000) == 87_500
    assert default_max_connections(64) == 32


async def test_the_command_line_raises_the_open_files_limit_and_takes_max_connections(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, soft)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    err = await start_and_stop_cli_relay(tmp_path, "--max-connections", "7", preexec_fn=lower)
    raised = f"open files limit {hard} (raised from {low})" if hard != resource.RLIM_INFINITY and hard > low \
        else f"open files limit {low}"
    assert raised in err and "at most 7 connections" in err, err


async def test_a_refused_client_that_ignores_the_close_is_dropped_at_once(make_relay: RelayFactory) -> None:
    """A client with no token that never answers the relay's close held its connection slot for websockets'
    close timeout (10 s): 60 such connections a second kept five in six real devices out of a relay capped
    at 100. It is dropped once ``REFUSE_WAIT`` (1 s) has passed."""
    import time

    from crdtsync.relay.admission import REFUSE_WAIT

    relay = await make_relay(GRANTS)
    assert relay.relay is not None
    cap = relay.relay.connections
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"GET /?token=nope HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await writer.drain()
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)).startswith(b"HTTP/1.1 101")
    started = time.monotonic()
    [held] = list(cap.open)  # counted at its handshake; it reads nothing more, and never answers the close
    await asyncio.wait_for(asyncio.shield(held.connection_lost_waiter), BOUND)
    assert time.monotonic() - started < REFUSE_WAIT + 3 and len(cap) == 0
    writer.close()


def test_refusals_are_logged_once_then_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """Every refused token was a WARNING line of its own: 24,364 lines in 10 s from one client."""
    from crdtsync.relay.admission import LogThrottle

    now = [0.0]
    throttle = LogThrottle("refused connections with a missing or unknown token", clock=lambda: now[0])
    for _ in range(100):
        throttle("1.2.3.4: unknown token")
    now[0] = 61.0
    throttle("1.2.3.4: unknown token")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2 and throttle.count == 101
    assert "(99 more since the last report)" in lines[1] and "more since" not in lines[0]
