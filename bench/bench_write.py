"""Local durable write: ``Replica.update()`` of one field vs a bare pycrdt Map set plus one SQLite
INSERT + commit of the same update bytes, same journal mode and ``synchronous`` setting.

Both sides run interleaved, one write each in turn, in rounds in one process (2 shared cores and a
shared disk are noisy); the ratio is the median of the per-round ratios of wall-clock time (what an app
waits for, fsync included). The CPU-time ratio is printed beside it. Target: ratio <= 2.

``--field notes`` writes a short ``Text`` field instead of an ``Int`` one, cycling through edits of a
word and whole rewrites (``NOTES``): the replica diffs each text (``crdtsync.model.textdiff``), the
baseline replaces the whole Y.Text.

    PYTHONPATH=. python bench/bench_write.py [--n 300] [--rounds 7] [--synchronous FULL|NORMAL]
                                             [--field employees|notes]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map, Text, TransactionEvent

from crdtsync import Replica
from crdtsync.demo import DEMO_SCHEMA

__all__ = ["main"]

#: the texts a ``--field notes`` run writes in turn: a word changed, then a rewrite, and so on
NOTES = ["Call back on Monday", "Call back on Tuesday", "Meeting booked for Tuesday 10:00",
         "Meeting booked for Tuesday 11:00", "Customer declined, close deal", "Customer declined, close the deal",
         "Met the new buyer at the trade fair. Wants a demo of the mobile app next week.",
         "Met the new buyer at the fair. Wants a demo of the offline app next week."]


class Bare:
    """The baseline: one pycrdt Map set, its update bytes INSERTed into SQLite and committed."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute("CREATE TABLE u (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        self.doc: Doc[Any] = Doc()
        self.map: Map[Any] = self.doc.get("f", type=Map)
        self.text: Text = self.doc.get("t", type=Text)
        self.captured: list[bytes] = []
        self.doc.observe(self._on)
        self.n = 0

    def _on(self, event: TransactionEvent) -> None:
        self.captured.append(event.update)

    def write(self, value: int, field: str = "employees") -> None:
        if field == "notes":
            with self.doc.transaction():
                del self.text[:]
                self.text += NOTES[value % len(NOTES)]
        else:
            self.map["employees"] = str(value)
        update = self.captured.pop()
        self.n += 1
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("INSERT INTO u (k, v) VALUES (?, ?)", (self.n, update))
        self.db.execute("COMMIT")


def _value(field: str, v: int) -> Any:
    return NOTES[v % len(NOTES)] if field == "notes" else v


def run(n: int, rounds: int, synchronous: str, field: str = "employees") -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        bare = Bare(Path(tmp) / "bare.db", synchronous)
        r = Replica.open(Path(tmp) / "replica.db", DEMO_SCHEMA, device="bench", user="bench",
                         synchronous=synchronous)  # type: ignore[arg-type]
        rid = r.create("accounts", {"name": "Acme"})
        for i in range(20):  # warm up both
            bare.write(i, field)
            r.update("accounts", rid, {field: _value(field, i)})
        ratios, t_bare, t_rep, cpu_ratios = [], [], [], []
        v = 100
        clock = time.perf_counter
        cpu = time.process_time
        for _ in range(rounds):
            # one bare write, then one replica write, and so on: both see the same disk weather
            sb = sr = cb = cr = 0.0
            for _ in range(n):
                v += 1
                c0, t0 = cpu(), clock()
                bare.write(v, field)
                c1, t1 = cpu(), clock()
                r.update("accounts", rid, {field: _value(field, v)})
                c2, t2 = cpu(), clock()
                sb += t1 - t0
                sr += t2 - t1
                cb += c1 - c0
                cr += c2 - c1
            r.acknowledge(p.id for p in r.pending())  # as a sync would: the outbox stays small
            t_bare.append(sb / n)
            t_rep.append(sr / n)
            ratios.append(sr / sb)
            cpu_ratios.append(cr / cb)
        r.close()
        bare.db.close()
    return {"bare_us": statistics.median(t_bare) * 1e6, "replica_us": statistics.median(t_rep) * 1e6,
            "ratio": statistics.median(ratios), "cpu_ratio": statistics.median(cpu_ratios)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--synchronous", nargs="*", default=["FULL", "NORMAL"])
    p.add_argument("--field", choices=["employees", "notes"], default="employees")
    args = p.parse_args(argv)
    worst = 0.0
    for sync in args.synchronous:
        res = run(args.n, args.rounds, sync, args.field)
        worst = max(worst, res["ratio"])
        print(f"write  {args.field:<9} synchronous={sync:<6} bare pycrdt+SQLite {res['bare_us']:8.1f} us/op   "
              f"Replica.update {res['replica_us']:8.1f} us/op   ratio {res['ratio']:.2f}  (target <= 2)   "
              f"[CPU-time ratio {res['cpu_ratio']:.2f}]")
    print(f"write  worst ratio {worst:.2f}: {'OK' if worst <= 2 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
