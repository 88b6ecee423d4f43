"""Group commit: ``SQLiteStore.commit`` of the relay's write groups vs the same rows written the bare way.

The relay stages each group of pushed changes into one ``Batch`` (a log entry, an update, a dedup entry
and the record's entry per change: ~4 rows, ~500 bytes) and commits it in a thread
(``asyncio.to_thread``) while its event loop goes on. Here 5,000 changes to 100 records, staged by the
relay's own ``RelayLog`` in groups of 32, are committed into a fresh SQLite file by:

- ``bare``: one ``sqlite3`` connection, same table, same pragmas, keys already encoded:
  ``BEGIN IMMEDIATE``, ``executemany`` of the upsert, ``COMMIT``: a plain application's group commit;
- ``store``: ``SQLiteStore.commit(batch)``, tuple keys encoded by it.

Printed per change: the CPU time of the commits on the main thread (``time.process_time``; the ratio
store/bare is the median of the per-round ratios, rounds interleaved), and a GIL proxy: the commits run in
a thread while the main thread spins a pure-Python loop, as a relay's event loop would; "gil" is how much
slower the loop went than alone (its iterations against the rate measured just before and after), in µs
per change, and "thread wall" what the commits took meanwhile: a thread that releases the GIL waits up to
the switch interval (5 ms) to get it back from a busy loop. The two are noisy on a shared machine: read
medians of several rounds.

    PYTHONPATH=. python -m bench.bench_commit [--changes 5000] [--group 32] [--rounds 5] [--synchronous FULL NORMAL]
"""

from __future__ import annotations

import argparse
import gc
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from crdtsync.relay.auth import Tokens
from crdtsync.relay.log import RelayLog
from crdtsync.store.base import Batch
from crdtsync.store.keys import encode_key
from crdtsync.store.sqlite import SQLiteStore

from .fanout.crdtsync_leg import cached_updates
from .schema import SCHEMA

__all__ = ["main"]

T = TypeVar("T")

_UPSERT = "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v"


def groups(records: int, changes: int, group: int) -> tuple[Batch, list[Batch]]:
    """The relay's first batch (the records' creates) and its write groups, as it stages them."""
    creates, updates = cached_updates(records, changes)
    grant = Tokens(None).grant(None)  # no secret: everyone may write
    assert grant is not None
    out: list[Batch] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "stage.db", synchronous="OFF")
        log = RelayLog(store, SCHEMA)
        first = Batch()
        log.stage(first, "writer", grant, creates)
        store.commit(first)
        log.committed([])
        for i in range(0, len(updates), group):
            b = Batch()
            chunk = updates[i:i + group]
            log.prefetch_seen([("writer", c.change_id) for c in chunk])
            staged = log.stage(b, "writer", grant, chunk)
            store.commit(b)
            log.committed(staged.accepted)
            out.append(b)
        store.close()
    return first, out


class Bare:
    """The baseline: the rows of each batch, keys pre-encoded, by ``executemany`` in one transaction."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL)")

    def commit(self, rows: list[tuple[bytes, bytes]]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(_UPSERT, rows)
        self.db.execute("COMMIT")


def _spin_rate(seconds: float) -> float:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        for _ in range(200):
            n += 1
    return n / seconds


def _measure(commit: Callable[[T], None], items: list[T], n: int) -> tuple[float, float, float]:
    """(CPU µs/change on the main thread, then GIL µs/change and thread wall µs/change beside a busy loop)."""
    # the first half on the main thread, the second in a thread: each commits every row once in all
    half = len(items) // 2
    c0 = time.process_time()
    for it in items[:half]:
        commit(it)
    cpu = (time.process_time() - c0) / half
    done = threading.Event()
    wall: list[float] = []

    def work() -> None:
        t0 = time.perf_counter()
        for it in items[half:]:
            commit(it)
        wall.append(time.perf_counter() - t0)
        done.set()

    before = _spin_rate(0.1)
    th = threading.Thread(target=work)
    s0 = time.perf_counter()
    th.start()
    spins = 0
    while not done.is_set():
        for _ in range(200):
            spins += 1
    s = time.perf_counter() - s0
    th.join()
    alone = (before + _spin_rate(0.1)) / 2
    lost = max(0.0, s - spins / alone)
    per = n / len(items)  # changes per group
    return cpu / per * 1e6, lost / ((len(items) - half) * per) * 1e6, wall[0] / ((len(items) - half) * per) * 1e6


def run(changes: int, group: int, rounds: int, synchronous: str) -> dict[str, list[float]]:
    first, batches = groups(100, changes, group)
    res: dict[str, list[float]] = {k: [] for k in ("bare_cpu", "store_cpu", "ratio", "bare_gil", "store_gil",
                                                   "bare_wall", "store_wall")}
    rows = [[(encode_key(k), v) for k, v in b.saves.items()] for b in batches]
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            with tempfile.TemporaryDirectory() as tmp:
                bare = Bare(Path(tmp) / "bare.db", synchronous)
                bare.commit([(encode_key(k), v) for k, v in first.saves.items()])
                b_cpu, b_gil, b_wall = _measure(bare.commit, rows, changes)
                bare.db.close()
                store = SQLiteStore(Path(tmp) / "store.db", synchronous=synchronous)  # type: ignore[arg-type]
                store.commit(first)
                s_cpu, s_gil, s_wall = _measure(store.commit, batches, changes)
                store.close()
            for k, v in (("bare_cpu", b_cpu), ("store_cpu", s_cpu), ("ratio", s_cpu / b_cpu), ("bare_gil", b_gil),
                         ("store_gil", s_gil), ("bare_wall", b_wall), ("store_wall", s_wall)):
                res[k].append(v)
    finally:
        if gc_was:
            gc.enable()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--changes", type=int, default=5000)
    p.add_argument("--group", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--synchronous", nargs="*", default=["FULL", "NORMAL"])
    args = p.parse_args(argv)
    for sync in args.synchronous:
        res = run(args.changes, args.group, args.rounds, sync)
        med = {k: statistics.median(v) for k, v in res.items()}
        print(f"commit  synchronous={sync:<6} CPU µs/change: bare {med['bare_cpu']:6.1f}  "
              f"store {med['store_cpu']:6.1f}  ratio {med['ratio']:.2f}   beside a busy loop: "
              f"gil bare {med['bare_gil']:5.1f} store {med['store_gil']:5.1f}  "
              f"thread wall bare {med['bare_wall']:6.1f} store {med['store_wall']:6.1f}")
    print(f"(medians of {args.rounds} rounds; {args.changes} changes in groups of {args.group}, "
          "as the relay stages them)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
