"""One record written again and again: what each change costs the relay and the device as the record grows,
and how many bytes each write adds to it, by field kind.

A device writes one field of one record ``--writes`` times and syncs every ``--sync`` writes: its changes
are staged by the relay's log (``RelayLog.stage``), committed, and acknowledged (``Replica.acknowledge``),
the relay's record limited to 8 MiB as ``crdtsync relay`` limits it at the default frame limit (16 MiB).
Printed at each checkpoint: the relay's record size and bytes per write, and the time of each phase per
sync (device writes, relay staging, relay commit, device acknowledgement); then each phase's ratio of its
cost at the last checkpoint to its cost at the first, measured in the same run (flat is 1).

``--kinds``: the bytes a write adds to the record, per field kind (an Int set to a new value, a Str set to
the same value, a counter incremented, a set's element replaced, a text rewritten), on the relay (its
encoded record) and on the device (its export), and how many such writes a record holds under 8 MiB.

    PYTHONPATH=. python bench/bench_hot_record.py --writes 60000           # ~2 minutes (memory stores)
    PYTHONPATH=. python bench/bench_hot_record.py --writes 60000 --store sqlite
    PYTHONPATH=. python bench/bench_hot_record.py --kinds --kind-writes 5000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence

from crdtsync import Replica
from crdtsync.protocol import Change
from crdtsync.relay import Grant, RelayLog
from crdtsync.schema import Collection, Counter, Int, Schema, Set, Str, Text
from crdtsync.store.base import Batch, ByteStore
from crdtsync.store.memory import MemoryStore
from crdtsync.store.sqlite import SQLiteStore

__all__ = ["main"]

SCHEMA = Schema(Collection("accounts", {"name": Str(), "employees": Int(min=0), "owner": Str(),
                                        "visits": Counter(), "tags": Set(Str()), "notes": Text()}))
MAX_RECORD = 8 * 2**20  # what ``crdtsync relay`` passes at its default --max-frame (16 MiB): half of it
PHASES = ("update", "stage", "commit", "ack")


class Hot:
    """A device and a relay log, the device's writes to one record synced to the relay."""

    def __init__(self, store: Callable[[str], ByteStore]) -> None:
        self.relay = RelayLog(store("relay"), SCHEMA, max_record=MAX_RECORD)
        self.dev = Replica(store("device"), SCHEMA, device="dev", user="u")
        self.grant = Grant.open()
        self.rid = self.dev.create("accounts", {"name": "hot", "owner": "alice"})
        self.times = dict.fromkeys(PHASES, 0.0)
        self.sync()

    def write(self, kind: str, i: int) -> None:
        t = time.perf_counter()
        if kind == "employees":
            self.dev.update("accounts", self.rid, {"employees": i})
        elif kind == "owner":
            self.dev.update("accounts", self.rid, {"owner": "alice"})  # the same value again
        elif kind == "visits":
            self.dev.increment("accounts", self.rid, "visits", 1)
        elif kind == "tags":
            self.dev.update("accounts", self.rid, {"tags": {f"t{i % 3}"}})
        else:
            self.dev.update("accounts", self.rid, {"notes": f"seen at {i}"})
        self.times["update"] += time.perf_counter() - t

    def sync(self) -> list[str]:
        out = self.dev.outgoing()
        batch = Batch()
        t = time.perf_counter()
        o = self.relay.stage(batch, "dev", self.grant, [Change(p.id, p.collection, p.record, u) for p, u in out])
        t1 = time.perf_counter()
        self.relay.store.commit(batch)
        self.relay.committed(o.accepted)
        t2 = time.perf_counter()
        self.dev.acknowledge(o.ok)
        t3 = time.perf_counter()
        self.times["stage"] += t1 - t
        self.times["commit"] += t2 - t1
        self.times["ack"] += t3 - t2
        return [r.reason for r in o.rejected]

    def relay_size(self) -> int:
        return len(self.relay.docs.get("accounts", self.rid).doc.full_update())

    def device_size(self) -> int:
        return len(self.dev.export_updates())


def _stores(kind: str) -> Callable[[str], ByteStore]:
    if kind == "memory":
        return lambda name: MemoryStore()
    d = tempfile.mkdtemp(prefix="bench-hot-")
    return lambda name: SQLiteStore(f"{d}/{name}.db")


def growth(args: argparse.Namespace) -> None:
    hot = Hot(_stores(args.store))
    marks = sorted({int(m) for m in args.marks.split(",") if int(m) <= args.writes} | {args.writes})
    window = args.window
    print(f"one Int field written {args.writes} times, synced every {args.sync} writes ({args.store} stores); "
          f"per sync of {args.sync}, averaged over the {window} writes before each checkpoint")
    print(f"{'writes':>7} {'relay MB':>9} {'B/write':>8} " + " ".join(f"{p + ' s':>9}" for p in PHASES))
    rows: list[dict[str, float]] = []
    base = hot.relay_size()
    for i in range(1, args.writes + 1):
        hot.write("employees", i)
        if i % args.sync == 0:
            start_window = any(i == m - window for m in marks)
            rejected = hot.sync()
            if rejected:
                print(f"refused at {i} writes: {rejected[0][:160]}")
                break
            if start_window:
                hot.times = dict.fromkeys(PHASES, 0.0)
            if i in marks:
                size = hot.relay_size()
                per_sync = {p: hot.times[p] * args.sync / min(window, i) for p in PHASES}
                rows.append(per_sync)
                print(f"{i:>7} {size / 1e6:9.2f} {(size - base) / i:8.0f} "
                      + " ".join(f"{per_sync[p]:9.3f}" for p in PHASES), flush=True)
                hot.times = dict.fromkeys(PHASES, 0.0)
    if len(rows) >= 2:
        print("cost at the last checkpoint / at the first: "
              + ", ".join(f"{p} x{rows[-1][p] / max(rows[0][p], 1e-9):.1f}" for p in PHASES))


def kinds(args: argparse.Namespace) -> None:
    n = args.kind_writes
    print(f"bytes a write adds to the record, by field kind ({n} writes each, synced every {args.sync})")
    print(f"{'field':<10} {'relay B/write':>14} {'device B/write':>15} {'writes under 8 MiB':>19}")
    for kind in ("employees", "owner", "visits", "tags", "notes"):
        hot = Hot(_stores("memory"))
        r0, d0 = hot.relay_size(), hot.device_size()
        for i in range(1, n + 1):
            hot.write(kind, i)
            if i % args.sync == 0:
                hot.sync()
        hot.sync()
        r, d = (hot.relay_size() - r0) / n, (hot.device_size() - d0) / n
        print(f"{kind:<10} {r:14.0f} {d:15.0f} {int((MAX_RECORD - r0) / r):19,}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writes", type=int, default=60_000)
    ap.add_argument("--sync", type=int, default=500)
    ap.add_argument("--window", type=int, default=2000, help="writes averaged before each checkpoint")
    ap.add_argument("--marks", default="2000,10000,30000,60000,66000", help="checkpoints (writes)")
    ap.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    ap.add_argument("--kinds", action="store_true", help="bytes per write by field kind instead")
    ap.add_argument("--kind-writes", type=int, default=5000)
    args = ap.parse_args(argv)
    if args.kinds:
        kinds(args)
    else:
        growth(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
