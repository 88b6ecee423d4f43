"""Scale: open a replica of 100k records and read one record, vs the same with 1k records.
Target: ratio <= 2, and resident memory growth for the 100k replica under 100 MB.

The databases are built from 1,000 real records (created, edited and acknowledged through the API)
copied under fresh ids, as a device would hold them after syncing. Each measurement runs in a fresh
process (so memory and caches start cold for both sizes); the median of ``--runs`` is used.

    PYTHONPATH=. python bench/bench_scale.py [--sizes 1000 100000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crdtsync import Replica
from crdtsync.demo import DEMO_SCHEMA
from crdtsync.store import Batch, MemoryStore, SQLiteStore

__all__ = ["main"]


def template(n: int = 1000) -> MemoryStore:
    rnd = random.Random(3)
    store = MemoryStore()
    r = Replica(store, DEMO_SCHEMA, device="phone", user="alice", random_bytes=rnd.randbytes)
    for i in range(n):
        rid = r.create("accounts", {"name": f"Account {i}", "employees": rnd.randrange(500),
                                    "notes": "Met the buyer. " * rnd.randrange(1, 4), "tags": {"lead"}},
                       id=f"t{i:05}")
        r.update("accounts", rid, {"phone": f"+1 555 {i:04}"})
        r.increment("accounts", rid, "visits", rnd.randrange(1, 5))
    r.acknowledge(p.id for p in r.pending())
    return store


def build(path: Path, size: int, tpl: MemoryStore) -> None:
    """``size`` records: the template's records copied under ids r000000..., in batches."""
    records: dict[str, list[tuple[tuple[str | int, ...], bytes]]] = {}
    meta = []
    for key, raw in tpl.load_range(()):
        if key[0] in ("snap", "upd", "row"):
            records.setdefault(str(key[2]), []).append((key, raw))
        elif key[0] == "meta":
            meta.append((key, raw))
    tids = sorted(records)
    store = SQLiteStore(path, synchronous="OFF")
    batch = Batch()
    for key, raw in meta:
        batch.save(key, raw)
    for i in range(size):
        rid = f"r{i:06}"
        for key, raw in records[tids[i % len(tids)]]:
            batch.save((key[0], key[1], rid, *key[3:]), raw)
        if len(batch.saves) > 50_000:
            store.commit(batch)
            batch = Batch()
    store.commit(batch)
    store.close()


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(path: str, size: int) -> None:
    before = rss_mb()
    t0 = time.perf_counter()
    r = Replica.open(path, DEMO_SCHEMA, device="phone", user="alice")
    rec = r.get("accounts", f"r{size // 2:06}")
    t1 = time.perf_counter()
    assert rec is not None and rec.fields["name"].startswith("Account")
    r.update("accounts", rec.id, {"employees": 7})  # and one durable write, loading its document
    t2 = time.perf_counter()
    print(json.dumps({"open_read": t1 - t0, "write": t2 - t1, "rss_growth_mb": rss_mb() - before}))
    r.close()


def measure(path: Path, size: int, runs: int) -> dict[str, float]:
    out: list[dict[str, float]] = []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    for _ in range(runs):
        res = subprocess.run([sys.executable, __file__, "--child", str(path), str(size)], env=env,
                             capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout))
    return {k: statistics.median(o[k] for o in out) for k in out[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs=2, default=[1_000, 100_000])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    small, big = args.sizes
    tpl = template()
    with tempfile.TemporaryDirectory() as tmp:
        res = {}
        for size in (small, big):
            path = Path(tmp) / f"r{size}.db"
            t0 = time.perf_counter()
            build(path, size, tpl)
            mb = path.stat().st_size / 1e6
            print(f"scale  built {size:>7} records in {time.perf_counter() - t0:5.1f} s ({mb:.0f} MB on disk)")
            res[size] = measure(path, size, args.runs)
    s, b = res[small], res[big]
    ratio = b["open_read"] / s["open_read"]
    for size, m in res.items():
        print(f"scale  {size:>7} records: open + get one {m['open_read'] * 1e3:7.2f} ms, then update one "
              f"{m['write'] * 1e3:6.2f} ms, RSS growth {m['rss_growth_mb']:6.1f} MB")
    ok = ratio <= 2 and b["rss_growth_mb"] < 100
    print(f"scale  ratio {big}/{small} open+get {ratio:.2f} (target <= 2), RSS growth {b['rss_growth_mb']:.1f} MB "
          f"(target < 100 MB): {'OK' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
