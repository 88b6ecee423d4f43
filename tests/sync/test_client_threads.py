"""A replica shared by the SyncClient's event loop and an app's worker thread: the worker writes while the
client syncs again and again, merging another device's changes into the record the worker changes; every
change reaches both devices, none is lost or raises."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable

from crdtsync import Replica

from .conftest import RelayFactory, client, sync

ROUNDS = 300


async def test_a_worker_thread_writes_while_the_client_syncs(make_relay: RelayFactory,
                                                             make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a, b = make_replica("a"), make_replica("b")
    shared = a.create("accounts", {"name": "shared"})
    errors: list[BaseException] = []
    made: list[str] = []

    def work() -> None:
        try:
            for i in range(ROUNDS):
                a.increment("accounts", shared, "visits", 1)
                made.append(a.create("accounts", {"name": f"w{i}", "tags": {"t"}}))
                a.update("accounts", made[-1], {"notes": f"note {i}"})
        except BaseException as e:  # a pyo3 PanicException derives from BaseException
            errors.append(e)

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads switch often: they meet inside the replica
    try:
        worker = threading.Thread(target=work)
        async with client(a, relay.url) as ca, client(b, relay.url) as cb:
            await sync(ca)
            await sync(cb)
            worker.start()
            bumps = 0
            while worker.is_alive():  # b's increments merge into the record a's worker increments
                b.increment("accounts", shared, "visits", 1)
                bumps += 1
                await sync(cb)
                await sync(ca)
            await asyncio.to_thread(worker.join)
            await sync(ca)
            await sync(cb)
            await sync(ca)
    finally:
        sys.setswitchinterval(before)
    assert errors == []
    assert a.pending() == [] and b.pending() == []
    for r in (a, b):
        rec = r.get("accounts", shared)
        assert rec is not None and rec.fields["visits"] == ROUNDS + bumps
    assert sorted(r.id for r in b.query("accounts")) == sorted([shared, *made])
    assert all((x := b.get("accounts", rid)) is not None and x.fields["notes"].startswith("note ") for rid in made)
