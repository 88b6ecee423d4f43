"""A relay whose store fails (here: the database locked by another process past SQLite's busy timeout, a real
fault) stops, with ``failure`` set, so that its process exits and a supervisor restarts it. It used to keep
listening and welcoming devices after its writer had died, acknowledging nothing ever again."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable

import pytest
from websockets.asyncio.client import connect

from crdtsync import Replica

from .conftest import BOUND, RelayFactory, client


async def test_a_relay_whose_store_fails_stops_and_says_why(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    assert relay.relay is not None
    a = make_replica("a")
    a.create("accounts", {"name": "Acme"})
    async with client(a, relay.url) as c:
        await asyncio.wait_for(c.sync_now(), BOUND)
        a.create("accounts", {"name": "Bolt"})
        locker = sqlite3.connect(relay.path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # holds the write lock: the relay's commit times out and fails
        try:
            syncing = asyncio.ensure_future(c.sync_now())
            await asyncio.wait_for(relay.relay.wait_stopped(), BOUND)
            assert not syncing.done()  # (offline now: it waits for a relay)
            syncing.cancel()
        finally:
            locker.execute("ROLLBACK")
            locker.close()
    assert isinstance(relay.relay.failure, sqlite3.OperationalError)
    with pytest.raises(OSError):  # no longer listening
        async with connect(relay.url, open_timeout=BOUND):
            pass
    assert [p.status for p in a.pending()] == ["pending"]  # nothing acknowledged, nothing lost


async def test_a_failed_commit_is_logged_once_with_its_traceback(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], caplog: pytest.LogCaptureFixture) -> None:
    """The failure was logged twice with the same traceback: an ERROR "commit of N changes failed", then
    the CRITICAL that stops the relay. Once now: the CRITICAL, whose traceback says what was committed."""
    relay = await make_relay()
    assert relay.relay is not None
    a = make_replica("a")
    a.create("accounts", {"name": "Acme"})
    a.create("accounts", {"name": "Bolt"})
    locker = sqlite3.connect(relay.path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        with caplog.at_level(logging.DEBUG, logger="crdtsync"):
            async with client(a, relay.url) as c:
                syncing = asyncio.ensure_future(c.sync_now())
                await asyncio.wait_for(relay.relay.wait_stopped(), BOUND)
                syncing.cancel()
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    with_traceback = [r for r in caplog.records if r.exc_info is not None and r.name.startswith("crdtsync.relay")]
    assert [r.levelno for r in with_traceback] == [logging.CRITICAL], [r.getMessage() for r in with_traceback]
    text = caplog.text
    assert text.count("Traceback") == 1 and "the relay was committing a group of 2 changes" in text
