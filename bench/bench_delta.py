"""Delta sync: a device reconnecting after C remote changes, on a data set of 1k records vs 100k.

For each size: a relay (``crdtsync relay`` process, SQLite) holding N records, and a device (a ``Replica``
on SQLite) that has synced all of them (both built by ``bench.delta_store``, see there why and how). Then,
``--rounds`` times: another device makes C updates to C random records and pushes them through the relay
(the real path: validated, stored); the device reconnects with ``SyncClient`` and catches up. Measured per
round: the time from the client's start to its first completed sync run (connect, hello, upload nothing,
download and apply the C changes, store the cursor), and the bytes it downloaded, counted on the wire by a
loopback proxy (HTTP upgrade and websocket framing included).

Targets (the sync issue): time(100k) / time(1k) <= 1.5, and bytes downloaded <= 2x the summed size of the
C changes' Yjs updates.

    PYTHONPATH=. python -m bench.bench_delta [--sizes 1000,100000] [--changes 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crdtsync.client.client import SyncClient
from crdtsync.client.status import SyncResult, SyncStatus
from crdtsync.protocol.events import Change
from crdtsync.replica import Replica
from crdtsync.store.sqlite import Synchronous

from .countproxy import CountingProxy
from .delta_store import build, record_id
from .fanout.crdtsync_leg import relay_argv
from .procs import server_process
from .protoclient import ProtoClient
from .schema import SCHEMA

__all__ = ["SizeResult", "main", "run"]


@dataclass
class SizeResult:
    records: int
    changes: int
    build_seconds: float
    times: list[float] = field(default_factory=list)
    downloaded: list[int] = field(default_factory=list)  # bytes on the wire, relay to device
    uploaded: list[int] = field(default_factory=list)  # bytes on the wire, device to relay
    update_bytes: list[int] = field(default_factory=list)  # the C changes' Yjs updates, summed
    items: list[int] = field(default_factory=list)  # changes the device reported downloading
    relay_cpu: list[float] = field(default_factory=list)  # the relay process's CPU seconds during a catch-up

    @property
    def time(self) -> float:
        return statistics.median(self.times)

    @property
    def bytes_ratio(self) -> float:
        return max(d / u for d, u in zip(self.downloaded, self.update_bytes, strict=True))


async def _catch_up(device: Replica, url: str, timeout: float) -> tuple[float, SyncResult]:
    """Start a client and wait for its first completed sync run (the automatic one on connecting)."""
    done: asyncio.Future[SyncResult] = asyncio.get_running_loop().create_future()

    def on_status(st: SyncStatus) -> None:
        if done.done():
            return
        if st.kind == "completed" and st.result is not None:
            done.set_result(st.result)
        elif st.kind == "failed":
            done.set_exception(RuntimeError(f"sync failed: {st.reason}"))

    client = SyncClient(device, url)
    client.subscribe(on_status)
    t0 = time.perf_counter()
    try:
        await client.start()
        result = await asyncio.wait_for(done, timeout)
        return time.perf_counter() - t0, result
    finally:
        await client.close()


class _Rig:
    """One data set: its relay process, the proxy in front of it, the device, and the remote device."""

    def __init__(self, records: int, changes: int, tmp: Path, timeout: float, keep_log: int | None = None,
                 profile: str | None = None, device_sync: Synchronous = "FULL") -> None:
        self.changes = changes
        self.device_sync = device_sync
        self.keep_log = keep_log
        self.profile = profile
        self.tmp = tmp
        self.timeout = timeout
        t = time.perf_counter()
        self.built = build(tmp / "relay.db", tmp / "device.db", SCHEMA, records, device="phone")
        self.result = SizeResult(records, changes, time.perf_counter() - t)
        self.rng = random.Random(records)
        self.known: set[int] = set()
        self.stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> _Rig:
        st = self.stack
        self.remote = st.enter_context(Replica.open(":memory:", SCHEMA, device="remote", user="dev"))
        self.device = st.enter_context(Replica.open(self.tmp / "device.db", SCHEMA, device="phone", user="dev",
                                                    synchronous=self.device_sync))
        argv = relay_argv(self.tmp / "relay.db", keep_log=self.keep_log, profile=self.profile)
        self.srv = srv = await st.enter_async_context(server_process(argv))
        self.proxy = await st.enter_async_context(CountingProxy(srv.port))
        self.pusher = await ProtoClient.open(f"ws://127.0.0.1:{srv.port}/sync", "remote")
        st.push_async_callback(self.pusher.close)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()

    async def round(self, rnd: int) -> None:
        records, changes, res = self.result.records, self.changes, self.result
        # C changes from another device, stored by the relay while the device is offline
        picked = self.rng.sample(range(records), changes)
        fresh = [i for i in picked if i not in self.known]
        self.remote.apply_remote([("accounts", record_id(i), self.built.update_of(i)) for i in fresh])
        self.known.update(fresh)
        for k, i in enumerate(picked):
            self.remote.update("accounts", record_id(i), {"employees": 10_000 + rnd * changes + k})
        out = self.remote.outgoing()
        ack = await asyncio.wait_for(
            await self.pusher.push([Change(pc.id, pc.collection, pc.record, u) for pc, u in out]), self.timeout)
        if len(ack.ok) != len(out):
            raise RuntimeError(f"the relay refused remote changes: {ack}")
        self.remote.acknowledge(ack.ok)
        res.update_bytes.append(sum(len(u) for _, u in out))
        # the device comes back online and catches up
        self.proxy.reset()
        cpu0 = self.srv.cpu()
        seconds, result = await _catch_up(self.device, f"ws://127.0.0.1:{self.proxy.port}/sync", self.timeout)
        res.relay_cpu.append(self.srv.cpu() - cpu0)
        res.times.append(seconds)
        res.downloaded.append(self.proxy.down)
        res.uploaded.append(self.proxy.up)
        res.items.append(result.downloaded)
        for k, i in enumerate(picked):
            rec = self.device.get("accounts", record_id(i))
            if rec is None or rec.fields.get("employees") != 10_000 + rnd * changes + k:
                raise RuntimeError(f"the device did not get the change of {record_id(i)}: {rec}")


async def run(sizes: Sequence[int], changes: int, rounds: int, tmp: Path, *, timeout: float = 60.0,
              keep_log: int | None = None, profile: str | None = None, device_sync: Synchronous = "FULL"
              ) -> list[SizeResult]:
    """Every data set is built and its relay started first; then the rounds alternate between data sets,
    so that a noisy moment on the shared machine does not land on one size only."""
    async with contextlib.AsyncExitStack() as stack:
        rigs = []
        for n in sizes:
            sub = tmp / str(n)
            sub.mkdir()
            rig = _Rig(n, changes, sub, timeout, keep_log, f"{profile}.{n}" if profile else None, device_sync)
            print(f"  {n} records: built in {rig.result.build_seconds:.1f} s", file=sys.stderr, flush=True)
            rigs.append(await stack.enter_async_context(rig))
        for rnd in range(rounds):
            for rig in rigs:
                await rig.round(rnd)
        return [r.result for r in rigs]


def format_report(results: list[SizeResult]) -> str:
    lines = [f"{'records':>8} {'build s':>8} {'catch-up ms (median)':>21} {'relay cpu ms':>13} "
             f"{'down bytes':>11} {'up bytes':>9} {'update bytes':>13} {'down/updates':>13} {'items':>6}  "
             "all rounds ms"]
    for r in results:
        rounds = ",".join(f"{x * 1000:.0f}" for x in r.times)
        lines.append(f"{r.records:>8} {r.build_seconds:>8.1f} {r.time * 1000:>21.1f} "
                     f"{statistics.mean(r.relay_cpu) * 1000:>13.1f} "
                     f"{max(r.downloaded):>11} {max(r.uploaded):>9} {max(r.update_bytes):>13} "
                     f"{r.bytes_ratio:>13.2f} {min(r.items):>6}  {rounds}")
    lines.append("")
    if len(results) >= 2:
        small, big = results[0], results[-1]
        ratio = big.time / small.time
        lines.append(f"time({big.records}) / time({small.records}) = {ratio:.2f}   "
                     f"(target <= 1.5: {'MET' if ratio <= 1.5 else 'NOT MET'}; medians)")
    worst = max(r.bytes_ratio for r in results)
    lines.append(f"bytes downloaded / bytes of the changes' updates = {worst:.2f} at worst   "
                 f"(target <= 2.0: {'MET' if worst <= 2.0 else 'NOT MET'})")
    lines.append("(catch-up = SyncClient start to its first completed sync: connect, hello, pull, apply, cursor; "
                 "relay cpu = the relay process's CPU time during it (mean of 10 ms clock ticks); bytes counted "
                 "on the wire by a loopback proxy, HTTP upgrade and websocket framing included)")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_delta", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,100000", help="data set sizes in records (default 1000,100000)")
    p.add_argument("--changes", type=int, default=100, help="remote changes per round (default 100)")
    p.add_argument("--rounds", type=int, default=15, help="reconnects per size; the median time counts (default 15)")
    p.add_argument("--timeout", type=float, default=60.0, help="bound on each push and catch-up (default 60 s)")
    p.add_argument("--keep-log", type=int, default=None,
                   help="the relay's --keep-log (default: the relay's own default)")
    p.add_argument("--profile-relay", metavar="PATH", help="run the relays under cProfile, writing PATH.<size>")
    p.add_argument("--device-sync", choices=["FULL", "NORMAL"], default="FULL",
                   help="the device replica's SQLite synchronous mode (default FULL, the Replica's default)")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        p.error("--sizes is a comma-separated list of ints")
    if not args.sizes or min(args.sizes) < 1 or args.changes < 1 or args.rounds < 1:
        p.error("sizes, --changes and --rounds must be >= 1")
    if args.changes > min(args.sizes):
        p.error("--changes cannot exceed the smallest size (each change touches a different record)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"delta sync: {args.changes} remote changes, {args.rounds} rounds, data sets of "
          f"{', '.join(map(str, args.sizes))} records", flush=True)

    async def go() -> list[SizeResult]:
        with tempfile.TemporaryDirectory(prefix="crdtsync-delta-") as tmp:
            return await run(args.sizes, args.changes, args.rounds, Path(tmp), timeout=args.timeout,
                             keep_log=args.keep_log, profile=args.profile_relay, device_sync=args.device_sync)

    print(format_report(asyncio.run(go())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
