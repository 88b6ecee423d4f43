"""A relay restarted, or killed with SIGKILL, in the middle of a sync: nothing acknowledged is lost and the
client reconnects and finishes by itself."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from crdtsync import Replica, SQLiteStore
from crdtsync.client import SyncStatus

from .conftest import BOUND, RelayFactory, Watch, client, snapshot, sync

ROOT = Path(__file__).resolve().parents[2]
N = 600


def make_edits(r: Replica) -> set[str]:
    return {r.create("accounts", {"name": f"acct {i}", "employees": i}) for i in range(N)}


async def test_relay_restarted_mid_sync(make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a, b = make_replica("a"), make_replica("b")
    ids = make_edits(a)
    restarted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    tasks: list[asyncio.Task[None]] = []

    async def restart() -> None:
        await relay.stop()
        await relay.start()
        restarted.set_result(None)

    def on_status(s: SyncStatus) -> None:
        if not tasks and s.kind == "progress" and s.phase == "upload" and s.done >= 200:
            tasks.append(asyncio.ensure_future(restart()))

    async with client(a, relay.url, batch_size=50) as ca:
        w = Watch(ca)
        ca.subscribe(on_status)
        result = await sync(ca)
        await asyncio.wait_for(restarted, BOUND)
    kinds = w.kinds()
    assert "offline" in kinds and "failed" in kinds
    assert kinds.index("failed") < len(kinds) - 1 - kinds[::-1].index("completed")  # failed, then completed
    assert result.uploaded < N  # the run that completed was the retry
    assert a.pending() == []
    async with client(b, relay.url) as cb:
        await sync(cb)
    assert {r.id for r in b.query("accounts")} == ids
    assert snapshot(a) == snapshot(b)


async def spawn_relay(db: Path, port: int, log: Path) -> tuple[asyncio.subprocess.Process, int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "crdtsync", "relay", "--host", "127.0.0.1", "--port", str(port), "--db", str(db),
            "--schema", "tests.sync.conftest:SCHEMA", stdout=asyncio.subprocess.PIPE, stderr=err, cwd=ROOT, env=env)
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), BOUND)).decode()
    assert line.startswith("listening on ws://127.0.0.1:"), line
    return proc, int(line.rsplit(":", 1)[1])


async def test_relay_killed_with_sigkill_loses_nothing_it_acknowledged(
        tmp_path: Path, make_replica: Callable[..., Replica]) -> None:
    db, log = tmp_path / "relay.db", tmp_path / "relay.log"
    proc, port = await spawn_relay(db, 0, log)
    a, b = make_replica("a"), make_replica("b")
    ids = make_edits(a)
    acked_at_kill: set[str] = set()
    killed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_status(s: SyncStatus) -> None:
        if killed.done() or s.kind != "progress" or s.phase != "upload" or s.done < 200:
            return
        acked_at_kill.update(ids - {p.record for p in a.pending()})
        os.kill(proc.pid, signal.SIGKILL)
        killed.set_result(None)

    url = f"ws://127.0.0.1:{port}"
    procs = [proc]
    try:
        async with client(a, url, batch_size=50) as ca:
            ca.subscribe(on_status)
            syncing = asyncio.ensure_future(ca.sync_now())
            await asyncio.wait_for(killed, BOUND)
            assert await asyncio.wait_for(proc.wait(), BOUND) == -signal.SIGKILL
            assert len(acked_at_kill) >= 200
            store = SQLiteStore(db)  # what the killed relay left on disk
            try:
                missing = [rid for rid in acked_at_kill if store.load(("recs", "accounts", rid)) is None]
            finally:
                store.close()
            assert missing == []
            proc2, _ = await spawn_relay(db, port, log)
            procs.append(proc2)
            await asyncio.wait_for(syncing, BOUND)  # the client reconnected and finished by itself
        assert a.pending() == []
        async with client(b, url) as cb:
            await sync(cb)
        assert {r.id for r in b.query("accounts")} == ids
        assert snapshot(a) == snapshot(b)
        proc2.send_signal(signal.SIGTERM)  # clean shutdown
        assert await asyncio.wait_for(proc2.wait(), BOUND) == 0
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
