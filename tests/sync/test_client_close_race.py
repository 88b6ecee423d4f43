"""``SyncClient.close()`` always returns, and the client syncs nothing after it: even when the cancellation
of its connection task arrives just as the relay's welcome does (Python 3.11's ``asyncio.wait_for``
swallowed that cancellation, and ``close()`` then waited forever for a client that went on syncing)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve

from crdtsync import Replica
from crdtsync.client import SyncStatus
from crdtsync.protocol import Welcome
from crdtsync.timeouts import wait_for

from .conftest import BOUND, RelayFactory, Watch, client


async def test_wait_for_never_loses_a_cancellation_arriving_as_the_future_completes() -> None:
    """The race itself, with a future the test completes: the result is set and the waiting task
    cancelled in the same step of the loop. The task must end cancelled, not return the result."""
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    entered = asyncio.Event()

    async def waiter() -> str:
        entered.set()
        return await wait_for(asyncio.shield(fut), 10)

    task = asyncio.create_task(waiter())
    await entered.wait()  # the task is now suspended inside wait_for
    fut.set_result("welcome")
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=BOUND)
    assert done and task.cancelled()


async def test_wait_for_times_out_and_returns_results() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await wait_for(asyncio.shield(never), 0)
    assert not never.done()  # shielded: still there for others
    ready = asyncio.Event()
    ready.set()
    assert await wait_for(ready.wait(), 0) is True
    assert await wait_for(asyncio.shield(asyncio.ensure_future(ready.wait())), None) is True


async def test_close_as_the_welcome_arrives_returns_and_the_client_never_goes_online(
        make_replica: Callable[..., Replica]) -> None:
    """A relay that takes the hello and never answers; the test then completes the client's welcome and
    calls close() in one step of the loop, so that close()'s cancellation meets the completed welcome."""
    hello = asyncio.Event()

    async def silent(ws: ServerConnection) -> None:
        await ws.recv()
        hello.set()
        await ws.wait_closed()

    async with serve(silent, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        c = client(make_replica("a"), f"ws://127.0.0.1:{port}")
        w = Watch(c)
        await c.start()
        await wait_for(hello.wait(), BOUND)  # the client sent its hello and waits for the welcome
        session = c._session
        assert session is not None and not session.welcomed.done()
        session.welcomed.set_result(Welcome("*", "relay-1", 0, 0, "*", "*"))
        session.welcome = session.welcomed.result()
        closing = asyncio.ensure_future(c.close())
        done, _ = await asyncio.wait([closing], timeout=BOUND)
        assert done, "close() did not return"
        closing.result()
        assert [e.kind for e in w.events] == ["offline"] and c.status == SyncStatus("offline", "client closed")
        assert not c.online and c._tasks == []


async def test_start_close_cycles_on_a_loopback_relay_always_return(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """Start a client and close it at each stage of its start: at once (while it connects), once it is
    online, once its first sync started, during it, after it. Each close() returns, and no event follows
    the ``offline`` it sends."""
    relay = await make_relay()
    r = make_replica("a")
    r.create("accounts", {"name": "Acme"}, id="a1")
    stages: list[Callable[[SyncStatus], bool] | None] = [
        None, lambda st: st.kind == "online", lambda st: st.kind == "started",
        lambda st: st.kind == "progress", lambda st: st.kind == "completed"]
    for i in range(50):
        r.update("accounts", "a1", {"employees": i})  # something to upload each time
        c = client(r, relay.url)
        w = Watch(c)
        await c.start()
        stage = stages[i % len(stages)]
        if stage is not None:
            await w.wait(stage, past=True)
        closing = asyncio.ensure_future(c.close())
        done, _ = await asyncio.wait([closing], timeout=BOUND)
        assert done, f"close() #{i} did not return"
        closing.result()
        assert w.events[-1] == SyncStatus("offline", "client closed"), (i, w.kinds())
        assert c._tasks == [] and not c.online
