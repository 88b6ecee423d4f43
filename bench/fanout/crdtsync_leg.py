"""The crdtsync leg of the fan-out benchmark: a ``crdtsync relay`` process on a temporary SQLite database.

The updates are real record updates made by a ``Replica`` (in memory) before the clock starts: making them
costs the device about a millisecond each, which is the device's cost, not the relay's, and the other legs'
writers pay nothing comparable (a pycrdt map set). Readers are protocol clients (``bench.protoclient``:
the same protocol core as ``SyncClient``) that count the items they receive without storing them, the
counterpart of the other legs' readers, which only apply updates to an in-memory Doc.

Two writers:

- ``push`` (leg ``crdtsync``): one change per PUSH frame, pipelined up to the protocol's window of 64
  pushes in flight: the same message pattern as pycrdt's Provider (one message per update);
- ``client`` (leg ``crdtsync-client``): the real ``SyncClient`` over the writer's replica, made to sync
  once all the updates are made (it pushes batches of 200 and waits for each ack).

The relay runs with its per-connection rate limit lifted (``--rate``): its default, 500 frames/s, would
otherwise cap a one-change-per-frame writer at 500 updates/s, which would measure the limit, not the relay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from crdtsync.protocol.events import Ack, Change, Item
from crdtsync.replica import Replica

from ..procs import server_process
from ..protoclient import ProtoClient
from ..schema import SCHEMA
from .result import LegResult
from .waiting import wait_readers

__all__ = ["crdtsync_leg", "make_updates", "relay_argv"]

_WINDOW = 64  # the protocol core's max_pushes_in_flight


def relay_argv(db: Path, *, rate: float = 1e9, synchronous: str = "FULL", profile: str | None = None,
               keep_log: int | None = None) -> list[str]:
    """``crdtsync relay`` on ``db``, port 0, open (loopback only); under cProfile when ``profile`` is a path."""
    head = ["-m", "bench.profiled", profile] if profile else ["-m", "crdtsync"]
    keep = ["--keep-log", str(keep_log)] if keep_log is not None else []
    return [*head, "relay", "--port", "0", "--db", str(db), "--schema", "bench.schema:SCHEMA",
            "--rate", str(rate), "--synchronous", synchronous, *keep]


def make_updates(replica: Replica, records: int, updates: int) -> tuple[list[Change], list[Change]]:
    """Create ``records`` accounts, then make ``updates`` small updates spread over them (round robin).

    Returns (the creates, the updates) as protocol changes, in the order they were made; they stay pending
    in ``replica``.
    """
    ids = [replica.create("accounts", {"name": f"Account {i}", "city": "Lyon"}) for i in range(records)]
    for n in range(updates):
        replica.update("accounts", ids[n % records], {"employees": n})
    changes = [Change(pc.id, pc.collection, pc.record, u) for pc, u in replica.outgoing()]
    return changes[:records], changes[records:]


_MADE: dict[tuple[int, int], tuple[list[Change], list[Change]]] = {}


def cached_updates(records: int, updates: int) -> tuple[list[Change], list[Change]]:
    """``make_updates`` on a throwaway replica, once per process and size (they cost ~1 ms each to make)."""
    if (records, updates) not in _MADE:
        with Replica.open(":memory:", SCHEMA, device="writer", user="bench") as replica:
            _MADE[(records, updates)] = make_updates(replica, records, updates)
    return _MADE[(records, updates)]


async def _push_all(writer: ProtoClient, changes: Sequence[Change], per_push: int) -> list[Ack]:
    """Push ``changes``, ``per_push`` per frame, keeping at most the protocol's window of pushes in flight."""
    in_flight: set[asyncio.Future[Ack]] = set()
    acks: list[Ack] = []
    for start in range(0, len(changes), per_push):
        if len(in_flight) >= _WINDOW:
            done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            acks += [f.result() for f in done]
        in_flight.add(await writer.push(changes[start:start + per_push]))
    if in_flight:
        acks += await asyncio.gather(*in_flight)
    return acks


async def crdtsync_leg(updates: int, readers: int, timeout: float, tmp: Path, *, idle: float = 10.0,
                       records: int = 100, writer_mode: str = "push", profile: str | None = None,
                       synchronous: str = "FULL") -> LegResult:
    name = "crdtsync" if writer_mode == "push" else "crdtsync-client"
    replica: Replica | None = None
    if writer_mode == "push":
        creates, changes = cached_updates(records, updates)
    else:
        replica = Replica.open(":memory:", SCHEMA, device="writer", user="bench")
        creates, changes = make_updates(replica, records, updates)
    notes = [f"{updates} updates of {sum(len(c.update) for c in changes) / max(1, len(changes)):.0f} bytes "
             f"on average, over {records} records; relay rate limit lifted"]
    if synchronous != "FULL":
        name += f"({synchronous})"
        notes.append(f"relay SQLite synchronous={synchronous}: not durable against power loss")
    async with server_process(relay_argv(tmp / "relay.db", profile=profile, synchronous=synchronous)) as srv:
        url = f"ws://127.0.0.1:{srv.port}/sync"
        clients: list[ProtoClient] = []
        try:
            writer = await ProtoClient.open(url, "writer")
            clients.append(writer)
            await _push_all(writer, creates, 200)
            if replica is not None:
                replica.acknowledge([c.change_id for c in creates])
            base = writer.welcome.result().head + len(creates)
            seen: list[set[int]] = [set() for _ in range(readers)]
            received = [0] * readers
            loop = asyncio.get_running_loop()
            done: list[asyncio.Future[float]] = [loop.create_future() for _ in range(readers)]

            def counter(i: int) -> Callable[[Sequence[Item]], None]:
                def on_items(items: Sequence[Item]) -> None:
                    fresh = [it.seq for it in items if it.seq > base]
                    received[i] += len(fresh)
                    seen[i].update(fresh)
                    if len(seen[i]) >= updates and not done[i].done():
                        done[i].set_result(time.perf_counter())
                return on_items

            async def join(i: int) -> ProtoClient:
                c = await ProtoClient.open(url, f"reader-{i}")
                clients.append(c)
                c.on_items = counter(i)
                await c.pull(0, None, live=True)  # first sync (the creates), then live
                return c

            await asyncio.gather(*(join(i) for i in range(readers)))
            frames0 = [c.messages_received for c in clients]
            cpu0, srv0 = time.process_time(), srv.cpu()
            t0 = time.perf_counter()
            if replica is None:
                pushing = asyncio.ensure_future(_push_writer(writer, changes))
            else:
                pushing = asyncio.ensure_future(_sync_client(replica, url, timeout))
            end, why = await wait_readers(done, lambda: sum(received), idle=idle, cap=timeout)
            if why:
                notes.append(why)
            try:
                refused = await asyncio.wait_for(pushing, 30)
            except TimeoutError:
                notes.append("the writer's changes were not all acknowledged 30 s after the readers finished")
                refused = 0
            if refused:
                notes.append(f"the relay refused or held {refused} changes")
            frames = [c.messages_received - f0 for c, f0 in zip(clients, frames0, strict=True)]
            if writer_mode == "push":
                notes.append(f"frames the relay sent during the run: {frames[0]} to the writer (acks of "
                             f"{len(changes)} pushes), {sum(frames[1:]) / max(1, readers):.0f} to each reader")
            closed = [c.device for c in clients if c.closed.done()]
            if closed:
                notes.append(f"closed by the relay: {closed}")
            return LegResult(name, updates, end - t0, received, [len(s) for s in seen], why is not None,
                             srv.cpu() - srv0, time.process_time() - cpu0, notes=notes)
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
            if replica is not None:
                replica.close()


async def _push_writer(writer: ProtoClient, changes: Sequence[Change]) -> int:
    """One change per push, pipelined; returns how many changes the relay refused or held."""
    acks = await _push_all(writer, changes, 1)
    return sum(len(a.rejected) + len(a.held) for a in acks)


async def _sync_client(replica: Replica, url: str, timeout: float) -> int:
    """Sync the writer's replica once (its pending changes go up in pushes of 200, each awaiting its ack);
    returns how many changes the relay refused or held."""
    from crdtsync.client.client import SyncClient

    async with SyncClient(replica, url) as client:
        result = await asyncio.wait_for(client.sync_now(), timeout)
    return result.rejected + result.held
