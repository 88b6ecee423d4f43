"""The relay's cost of one change under the drafts strategies, against ``crdt``, as a record's history grows.

One hot record gets ``--edits`` updates of one field, each pushed by one of two devices and staged by the
relay (``RelayLog.stage`` + a commit on a memory store, so this is CPU: validation, the drafts check, the
replay and the log entries, no disk). ``crdt``, ``lww-record`` and ``lww-patch`` run interleaved, one
change each in turn; the printed ratio is the median of the per-window ratios against ``crdt`` in windows of
``--window`` changes, at the start and at the end of the history (a draft is never removed from a record,
and the replay parses every draft of it: the cost per change grows with the record's history).

    PYTHONPATH=. python bench/bench_relay_drafts.py [--edits 600] [--window 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

from crdtsync import Replica
from crdtsync.protocol import Change
from crdtsync.relay import Grant, RelayLog
from crdtsync.schema import Collection, Schema, Str
from crdtsync.store.base import Batch
from crdtsync.store.memory import MemoryStore

__all__ = ["main"]

STRATEGIES = ("crdt", "lww-record", "lww-patch")


class Leg:
    """One strategy: a relay log and two devices taking turns editing one record, synced after each edit."""

    def __init__(self, strategy: str) -> None:
        schema = Schema(Collection("deals", {"name": Str(), "stage": Str()}, strategy=strategy))
        self.relay = RelayLog(MemoryStore(), schema)
        self.grant = Grant.open()
        self.devices = [Replica(MemoryStore(), schema, device=f"d{i}", user="u") for i in range(2)]
        self.cursors = [0, 0]
        self.times: list[float] = []
        self.rid = self.devices[0].create("deals", {"name": "Acme", "stage": "lead"}, id="hot")
        self.push(0)
        self.pull(1)

    def push(self, i: int) -> None:
        dev = self.devices[i]
        out = dev.outgoing()
        batch = Batch()
        t0 = time.perf_counter()
        o = self.relay.stage(batch, dev.device, self.grant, [Change(p.id, p.collection, p.record, u) for p, u in out])
        self.relay.store.commit(batch)
        self.relay.committed(o.accepted)
        self.times.append(time.perf_counter() - t0)
        assert not o.rejected, o.rejected
        dev.acknowledge(o.ok)

    def pull(self, i: int) -> None:
        items, self.cursors[i] = self.relay.delta(self.grant, self.devices[i].device, self.cursors[i], None)
        self.devices[i].apply_remote([(it.collection, it.record, it.update) for it in items])

    def edit(self, n: int) -> None:
        i = n % 2
        self.devices[i].update("deals", self.rid, {"stage": f"s{n}"})
        self.push(i)
        self.pull(1 - i)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", type=int, default=600)
    ap.add_argument("--window", type=int, default=50)
    args = ap.parse_args(argv)
    legs = {s: Leg(s) for s in STRATEGIES}
    for leg in legs.values():
        leg.times.clear()
    for n in range(args.edits):
        for leg in legs.values():
            leg.edit(n)
    w = min(args.window, args.edits)
    print(f"relay staging of one change to a record with a growing history ({args.edits} edits, windows of {w})")
    print(f"{'strategy':<12} {'first us':>9} {'last us':>9}  {'first/crdt':>10} {'last/crdt':>10}")
    base = legs["crdt"].times
    for s, leg in legs.items():
        first, last = leg.times[:w], leg.times[-w:]
        r_first = statistics.median(a / b for a, b in zip(first, base[:w], strict=True))
        r_last = statistics.median(a / b for a, b in zip(last, base[-w:], strict=True))
        print(f"{s:<12} {statistics.median(first) * 1e6:9.0f} {statistics.median(last) * 1e6:9.0f}  "
              f"{r_first:10.2f} {r_last:10.2f}")
    final = {}
    for s, leg in legs.items():
        rec = leg.devices[0].get("deals", "hot")
        assert rec is not None
        final[s] = dict(rec.fields)
    assert len({str(v) for v in final.values()}) == 1, final  # one writer at a time: every strategy agrees
    print(f"drafts/crdt at the end of the history: lww-record x{_ratio(legs, 'lww-record', w):.2f}, "
          f"lww-patch x{_ratio(legs, 'lww-patch', w):.2f}")
    return 0


def _ratio(legs: dict[str, Leg], s: str, w: int) -> float:
    return statistics.median(a / b for a, b in zip(legs[s].times[-w:], legs["crdt"].times[-w:], strict=True))


if __name__ == "__main__":
    raise SystemExit(main())
