"""Byte store throughput per backend, as ratios against SQLiteStore (synchronous=FULL) in the same run.

Measures, for each backend: commits per second of one small save (a device recording one change),
rows per second in batches of 100 saves (a relay storing a burst), rows per second of a full range scan
over 20,000 keys (iter_range, as on startup and compaction), and short range scans per second (the 10
updates of one record, as when a record is loaded). The machine is noisy: read the ratios, not the
absolute numbers, and run it twice.

    PYTHONPATH=$PWD python bench/bench_stores.py [--quick]

PostgreSQL is included when ``CRDTSYNC_PG_DSN`` names a database (it gets a fresh schema), or when server
binaries are found: then a throwaway cluster is started with fsync on, so it is compared fairly with
SQLite FULL (both wait for the disk at each commit).
"""

from __future__ import annotations

import argparse
import os
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
    args = ap.parse_args(argv)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crdtsync-bench-")))
        backends: dict[str, Callable[[], ByteStore]] = {
            "sqlite FULL (baseline)": lambda: SQLiteStore(tmp / "full.db"),
            "sqlite NORMAL": lambda: SQLiteStore(tmp / "normal.db", synchronous="NORMAL"),
            "memory": MemoryStore,
            "encrypted sqlite FULL": lambda: EncryptedStore(SQLiteStore(tmp / "enc.db"), KEY),
        }
        conninfo = stack.enter_context(postgres_conninfo())
        if conninfo is not None:
            from crdtsync.store.postgres import PostgresStore

            schema = f"bench_{uuid.uuid4().hex[:8]}"
            backends["postgres"] = lambda: PostgresStore(conninfo, schema=schema)
            backends["encrypted postgres"] = lambda: EncryptedStore(PostgresStore(conninfo, schema=schema,
                                                                                  table="enc"), KEY)
        else:
            print("(no PostgreSQL: set CRDTSYNC_PG_DSN or install the server to include it)")
        results: dict[str, dict[str, float]] = {}
        for name, make in backends.items():
            store = make()
            try:
                results[name] = measure(store, args.quick)
            finally:
                store.close()
    base = results["sqlite FULL (baseline)"]
    cols = list(base)
    print(f"{'backend':<24}" + "".join(f"{c:>22}" for c in cols))
    for name, r in results.items():
        print(f"{name:<24}" + "".join(f"{r[c]:>12.0f} ({r[c] / base[c]:5.2f}x)" for c in cols))
    print("ratios: higher is faster than SQLiteStore FULL measured in this run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
