"""Byte store throughput per backend, as ratios against SQLiteStore (synchronous=FULL) in the same run.

Measures, for each backend: commits per second of one small save (a device recording one change),
rows per second in batches of 100 saves (a relay storing a burst), rows per second of a full range scan
over 20,000 keys (iter_range, as on startup and compaction), and short range scans per second (the 10
updates of one record, as when a record is loaded). The machine is noisy (shared disk and cores): every
round measures each backend in turn on a fresh store, ratios are taken within a round, and the median
over rounds is printed.

    PYTHONPATH=$PWD python bench/bench_stores.py [--quick] [--rounds 3]

PostgreSQL is included when ``CRDTSYNC_PG_DSN`` names a database (it gets a fresh schema), or when server
binaries are found: then a throwaway cluster is started with fsync on, so it is compared fairly with
SQLite FULL (both wait for the disk at each commit).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from crdtsync.store import Batch, ByteStore, EncryptedStore, MemoryStore, SQLiteStore

__all__ = ["main"]

KEY = bytes(range(32))
VALUE = os.urandom(100)


@contextmanager
def postgres_conninfo() -> Iterator[str | None]:
    """A conninfo for a PostgreSQL database to measure, or None if there is none to be had."""
    if os.environ.get("CRDTSYNC_PG_DSN"):
        yield os.environ["CRDTSYNC_PG_DSN"]
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        yield None
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from pg_server import PgServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        yield None
        return
    server = PgServer(bindir, fsync=True)
    try:
        server.start()
        yield server.conninfo
    finally:
        server.stop()


def measure(store: ByteStore, quick: bool) -> dict[str, float]:
    n_single, n_batches, n_rows, n_short = (50, 10, 5000, 200) if quick else (300, 40, 20000, 1000)
    t = time.perf_counter()
    for i in range(n_single):
        store.save(("out", i), VALUE)
    single = n_single / (time.perf_counter() - t)

    t = time.perf_counter()
    for j in range(n_batches):
        b = Batch()
        for i in range(100):
            b.save(("burst", j, i), VALUE)
        store.commit(b)
    batched = n_batches * 100 / (time.perf_counter() - t)

    for start in range(0, n_rows, 1000):
        b = Batch()
        for i in range(start, start + 1000):
            b.save(("upd", "accounts", f"r{i // 10:06d}", i % 10), VALUE)
        store.commit(b)
    t = time.perf_counter()
    count = sum(1 for _ in store.iter_range(("upd", "accounts")))
    assert count == n_rows, count
    scan = n_rows / (time.perf_counter() - t)

    t = time.perf_counter()
    for i in range(n_short):
        rows = store.load_range(("upd", "accounts", f"r{(i * 7919) % (n_rows // 10):06d}"))
        assert len(rows) == 10
    short = n_short / (time.perf_counter() - t)
    return {"commit/s": single, "batched rows/s": batched, "scan rows/s": scan, "short scans/s": short}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller workload (a smoke run)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the median is printed (default 3)")
    args = ap.parse_args(argv)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crdtsync-bench-")))
        backends: dict[str, Callable[[str], ByteStore]] = {
            "sqlite FULL (baseline)": lambda r: SQLiteStore(tmp / f"full{r}.db"),
            "sqlite NORMAL": lambda r: SQLiteStore(tmp / f"normal{r}.db", synchronous="NORMAL"),
            "memory": lambda r: MemoryStore(),
            "encrypted sqlite FULL": lambda r: EncryptedStore(SQLiteStore(tmp / f"enc{r}.db"), KEY),
        }
        conninfo = stack.enter_context(postgres_conninfo())
        if conninfo is not None:
            from crdtsync.store.postgres import PostgresStore

            schema = f"bench_{uuid.uuid4().hex[:8]}"
            backends["postgres"] = lambda r: PostgresStore(conninfo, schema=schema, table=f"kv{r}")
            backends["encrypted postgres"] = lambda r: EncryptedStore(PostgresStore(conninfo, schema=schema,
                                                                                    table=f"enc{r}"), KEY)
        else:
            print("(no PostgreSQL: set CRDTSYNC_PG_DSN or install the server to include it)")
        rounds: list[dict[str, dict[str, float]]] = []
        for r in range(args.rounds):
            results: dict[str, dict[str, float]] = {}
            for name, make in backends.items():
                store = make(str(r))
                try:
                    results[name] = measure(store, args.quick)
                finally:
                    store.close()
            rounds.append(results)
    base = "sqlite FULL (baseline)"
    cols = list(rounds[0][base])
    print(f"{'backend':<24}" + "".join(f"{c:>22}" for c in cols))
    for name in backends:
        cells = []
        for c in cols:
            value = statistics.median(res[name][c] for res in rounds)
            ratio = statistics.median(res[name][c] / res[base][c] for res in rounds)
            cells.append(f"{value:>12.0f} ({ratio:5.2f}x)")
        print(f"{name:<24}" + "".join(cells))
    print(f"medians of {args.rounds} rounds; ratios (taken within each round): higher is faster than "
          "SQLiteStore FULL")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
