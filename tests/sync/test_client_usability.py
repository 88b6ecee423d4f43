"""What an app developer meets first: a wrong URL, a relay that is down, a wrong path, and the logs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from crdtsync import Replica, SyncClient
from crdtsync.errors import LocalError, SyncError

from .conftest import BOUND, RelayFactory, Watch, client, sync


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765", "127.0.0.1:8765", "localhost"])
def test_a_url_that_is_not_a_websocket_url_is_refused_at_once(url: str,
                                                                make_replica: Callable[..., Replica]) -> None:
    with pytest.raises(LocalError, match="not a websocket URL"):
        SyncClient(make_replica("a"), url)


async def test_relay_down_is_offline_not_an_exception_storm(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="crdtsync.client")
    relay = await make_relay()
    await relay.stop()  # the port is known, nothing listens on it
    a = make_replica("a")
    a.create("accounts", {"name": "offline"})
    async with client(a, relay.url) as c:
        w = Watch(c)
        st = await w.wait(lambda s: s.kind == "offline")
        assert st.reason is not None and "cannot reach the relay" in st.reason
        await w.wait(lambda s: s.kind == "offline")  # it keeps retrying by itself ...
        assert c.status.kind == "offline" and not c.online
        with pytest.raises(SyncError, match="offline: cannot reach the relay"):
            await c.sync_now(timeout=0.05)  # ... and a bounded wait says why, without losing the request
        assert c.pending_requests() >= 1
        completed = asyncio.ensure_future(w.wait(lambda s: s.kind == "completed"))
        await relay.start()
        st = await completed
        assert st.result is not None and st.result.uploaded == 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "crdtsync.client"]
    assert len(warnings) == 1 and "offline (cannot reach the relay" in warnings[0].getMessage()
    assert any("online: device a" in r.getMessage() for r in caplog.records)
    assert "failed" not in w.kinds()  # never connected, so no run was cut short


async def test_a_wrong_path_is_a_clear_error_not_endless_retries(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    async with client(make_replica("a"), relay.url + "/sync/v2") as c:
        with pytest.raises(SyncError, match="not a crdtsync endpoint"):
            await asyncio.wait_for(c.sync_now(), BOUND)
        with pytest.raises(SyncError):  # and stays so: no reconnect loop behind the app's back
            await sync(c)


async def test_a_yjs_room_url_is_a_clear_error_not_a_reconnect_loop(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """The relay's Yjs endpoint accepts the connection and answers in y-websocket: the client used to take
    that for a passing protocol error and reconnect for ever."""
    relay = await make_relay()
    async with client(make_replica("a"), relay.url + "/yjs/notes") as c:
        with pytest.raises(SyncError, match="does not answer as a crdtsync relay"):
            await asyncio.wait_for(c.sync_now(), BOUND)
        with pytest.raises(SyncError):
            await sync(c)
