"""What an app developer meets first: a wrong URL, a relay that is down, a wrong path, and the logs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from crdtsync import Replica, SyncClient
from crdtsync.errors import LocalError, SyncError, ValidationError
from crdtsync.protocol.frames import Kind

from .conftest import BOUND, ProxyFactory, RelayFactory, Watch, client, sync


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765", "127.0.0.1:8765", "localhost"])
def test_a_url_that_is_not_a_websocket_url_is_refused_at_once(url: str,
                                                                make_replica: Callable[..., Replica]) -> None:
    with pytest.raises(LocalError, match="not a websocket URL"):
        SyncClient(make_replica("a"), url)


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"interval": 0}, ValueError, "interval must be at least 0.01 seconds (or None: no scheduled syncs), not 0"),
    ({"interval": -1}, ValueError, "interval must be at least 0.01 seconds"),
    ({"interval": float("nan")}, ValueError, "interval must be at least 0.01 seconds"),
    ({"interval": "5"}, TypeError, "interval must be a number of seconds or None, not str"),
    ({"max_frame": 10}, ValueError, "max_frame must be at least 65536 bytes (64 KiB), not 10"),
    ({"max_frame": 1e6}, TypeError, "max_frame must be an int (bytes), not float"),
    ({"open_timeout": 0}, ValueError, "open_timeout must be more than 0 seconds, not 0"),
    ({"open_timeout": float("inf")}, ValueError, "open_timeout must be more than 0 seconds"),
    ({"batch_size": 0}, ValueError, "batch_size must be 1 to 1000 (changes per push), not 0"),
    ({"batch_size": 5000}, ValueError, "batch_size must be 1 to 1000 (changes per push), not 5000"),
    ({"batch_size": 2.0}, TypeError, "batch_size must be an int, not float"),
    ({"token": 5}, TypeError, "token must be a str or None, not int"),
    ({"backoff": 1.5}, TypeError, "backoff must be a Backoff or None, not float"),
])
def test_options_out_of_range_are_refused_at_construction(options: dict[str, object], error: type[Exception],
                                                          message: str, make_replica: Callable[..., Replica]) -> None:
    with pytest.raises(error) as e:
        SyncClient(make_replica("a"), "ws://127.0.0.1:8765", **options)  # type: ignore[arg-type]
    assert str(e.value) == f"SyncClient {message}" or message in str(e.value)
    SyncClient(make_replica("b"), "ws://127.0.0.1:8765", interval=0.01, max_frame=64 * 1024, open_timeout=0.5,
               batch_size=1000, token="t")  # the ends of each range are allowed


def test_subscribe_refuses_what_is_not_callable(make_replica: Callable[..., Replica]) -> None:
    c = SyncClient(make_replica("a"), "ws://127.0.0.1:8765")
    with pytest.raises(TypeError, match="subscribe takes a function of a SyncStatus, not 5"):
        c.subscribe(5)  # type: ignore[arg-type]


async def test_a_wss_url_at_a_plain_relay_says_what_failed(make_relay: RelayFactory,
                                                            make_replica: Callable[..., Replica]) -> None:
    """The TLS handshake meets a plain websocket server: the error has no text (``ConnectionResetError()``,
    or another OSError); the reason names its type instead of ending in ": "."""
    relay = await make_relay()
    async with client(make_replica("a"), relay.url.replace("ws://", "wss://", 1)) as c:
        st = await Watch(c).wait(lambda s: s.kind == "offline" and s.reason != "not started")
    assert st.reason is not None and st.reason.startswith("cannot reach the relay: ")
    said = st.reason.removeprefix("cannot reach the relay: ")
    assert said.strip(), st.reason


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


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("crdtsync") and r.exc_info]


async def test_a_replica_closed_under_its_client_stops_it_at_the_next_live_update(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], caplog: pytest.LogCaptureFixture) -> None:
    """App shutdown in the wrong order: the client used to reconnect for ever, logging a ``StoreClosed``
    traceback at each attempt."""
    relay = await make_relay()
    a, b = make_replica("a"), make_replica("b")
    c = client(a, relay.url)
    w = Watch(c)
    await c.start()
    await sync(c)
    a.close()
    failed = asyncio.ensure_future(w.wait(lambda s: s.kind == "failed"))
    b.create("accounts", {"name": "live"})
    async with client(b, relay.url) as cb:
        await sync(cb)  # a's client receives it live, and finds its replica closed
    st = await failed
    assert st.reason is not None and st.reason.startswith("the replica was closed (a)")
    assert c.status.kind == "failed" and not c.online
    with pytest.raises(SyncError, match=r"the replica was closed \(a\): close the SyncClient"):
        await sync(c)
    await c.close()  # still fine afterwards
    assert w.kinds().count("online") == 1 and _tracebacks(caplog) == []


async def test_sync_now_after_the_replica_closed_fails_at_once_and_stops_the_client(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], caplog: pytest.LogCaptureFixture) -> None:
    relay = await make_relay()
    a = make_replica("a")
    async with client(a, relay.url) as c:
        w = Watch(c)
        await sync(c)
        failed = asyncio.ensure_future(w.wait(lambda s: s.kind == "failed"))
        a.close()
        with pytest.raises(SyncError, match="the replica was closed"):
            await sync(c)
        st = await failed  # the idle connection ends too
        assert st.reason is not None and "the replica was closed" in st.reason
    assert w.kinds().count("online") == 1 and _tracebacks(caplog) == []


async def test_the_failed_event_comes_before_sync_now_raises(make_relay: RelayFactory,
                                                             make_replica: Callable[..., Replica]) -> None:
    """docs/sync.md: an app that closes the client as soon as ``sync_now`` raises still saw ``failed``."""
    relay = await make_relay()
    a = make_replica("a")
    c = client(a, relay.url)
    seen: list[str] = []
    c.subscribe(lambda s: seen.append(s.kind))
    await c.start()
    await sync(c)
    a.close()
    with pytest.raises(SyncError, match="the replica was closed"):
        await c.sync_now()
    assert seen[-1] == "failed" and c.status.kind == "failed"
    await c.close()
    assert seen.count("failed") == 1


async def test_a_replica_closed_while_offline_fails_the_waiting_sync_and_stops_retrying(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    await relay.stop()  # nothing listens: the client retries
    a = make_replica("a")
    async with client(a, relay.url) as c:
        w = Watch(c)
        waiting = asyncio.ensure_future(c.sync_now())
        await w.wait(lambda s: s.kind == "offline")
        a.close()
        with pytest.raises(SyncError, match="the replica was closed"):
            await asyncio.wait_for(waiting, BOUND)
        assert c.status.kind == "failed" and c.pending_requests() == 0


async def test_sync_units_must_be_a_list_of_collections_of_the_schema(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """A typo, or a bare str, used to complete "successfully" having synced nothing."""
    relay = await make_relay()
    a = make_replica("a")
    async with client(a, relay.url) as c:
        await sync(c)
        a.create("contacts", {"name": "queued"})
        with pytest.raises(ValidationError, match=r"^contact: unknown collection; the schema has \['accounts'"):
            await sync(c, ["contact"])
        with pytest.raises(ValidationError, match=r"^nope, secret: unknown collections") as err:
            await sync(c, ["accounts", "secret", "nope"])
        assert err.value.collection == "nope, secret"
        with pytest.raises(TypeError, match=r"not the str 'contacts': write sync_now\(\['contacts'\]\)"):
            await c.sync_now("contacts")
        assert c.pending_requests() == 0 and len(a.pending()) == 1  # nothing queued, nothing sent
        res = await sync(c, ["contacts"])
        assert res.uploaded == 1 and a.pending() == []


async def test_closing_an_idle_client_ends_with_offline(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a = make_replica("a")
    a.create("accounts", {"name": "synced"})
    c = client(a, relay.url)
    w = Watch(c)
    async with c:
        await sync(c)
    assert w.kinds()[-2:] == ["completed", "offline"]
    assert w.events[-1].reason == "client closed"
    assert c.status.kind == "offline" and c.status.reason == "client closed" and not c.online


async def test_closing_from_several_tasks_at_once_tells_the_app_once(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """Each of three concurrent close() calls sent its own ``offline``."""
    relay = await make_relay()
    c = client(make_replica("a"), relay.url)
    w = Watch(c)
    await c.start()
    await sync(c)
    await asyncio.gather(c.close(), c.close(), c.close())
    await c.close()  # and once more, later
    assert w.kinds().count("offline") == 1 and w.kinds()[-1] == "offline"


async def test_closing_a_client_during_a_run_ends_the_run_with_failed_then_offline(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], make_proxy: ProxyFactory) -> None:
    relay = await make_relay()
    proxy = await make_proxy(relay.port)
    a = make_replica("a")
    c = client(a, proxy.url)
    w = Watch(c)
    await c.start()
    await sync(c)
    a.create("accounts", {"name": "under way"})
    proxy.hold()  # the relay's answers never arrive
    waiting = asyncio.ensure_future(c.sync_now(["accounts"]))
    await proxy.seen(lambda kind, h: kind is Kind.ACK)  # the run is under way: its push was stored
    assert c.status.kind == "started"
    await c.close()
    with pytest.raises(SyncError, match="client closed"):
        await asyncio.wait_for(waiting, BOUND)
    assert w.kinds()[-3:] == ["started", "failed", "offline"], w.kinds()
    assert [(e.reason, e.collections) for e in w.events[-2:]] == [("client closed", ("accounts",)),
                                                                   ("client closed", None)]
    assert c.status.kind == "offline" and c.status.reason == "client closed"
    assert [p.status for p in a.pending()] == ["pending"]  # sent again at the next sync


async def test_a_sync_now_timeout_says_what_this_request_waits_on(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], make_proxy: ProxyFactory) -> None:
    """It quoted ``status``, which may be an earlier run's: "sync did not complete within 30 s (completed: 2
    up, ...)" for a request that was waiting on something else entirely."""
    relay = await make_relay()
    proxy = await make_proxy(relay.port)
    a = make_replica("a")
    async with client(a, proxy.url) as c:
        await sync(c)
        a.create("accounts", {"name": "under way"})
        proxy.hold()  # the relay's answers never arrive: the run stays under way
        with pytest.raises(SyncError) as own:
            await c.sync_now(timeout=1.0)
        assert "(its run is under way" in str(own.value) and "it stays queued" in str(own.value), own.value
        with pytest.raises(SyncError) as behind:
            await c.sync_now(["accounts"], timeout=0.05)
        assert "(queued behind 1 request, one under way)" in str(behind.value), behind.value
        assert not {"completed", "started"} & set(f"{own.value} {behind.value}".replace("(", " ").split())
        proxy.release()
        assert (await sync(c)).uploaded == 0  # the queued requests ran; nothing left
    assert [p.status for p in a.pending()] == []
