"""Simulator speed: simulated edits per second per strategy, against bare pycrdt Docs doing the same edits.

Run: ``PYTHONPATH=. python bench/bench_sim.py`` (defaults: 5 devices, 200 records, 5,000 edits, seed 7).

The baseline, measured in the same process, applies the plan's edits to bare pycrdt documents: one Doc per
record per device, each edit a ``Map`` set on its device's Doc, its update applied at once to the same record
on every other device (no store, no outbox, no network, no oracle). A strategy's ratio is its simulated
edits per second divided by the baseline's: how much of a raw CRDT's speed the whole simulation keeps
(replicas on a byte store, outbox, rows, faults, the server, the oracle). Both sides are timed in CPU
seconds (``time.process_time``), which a busy shared machine disturbs less than wall time; compare ratios.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, cast

import orjson
from pycrdt import Doc, Map, TransactionEvent

from crdtsync.schema import Strategy
from crdtsync.sim import Params, make_plan, run_plan
from crdtsync.sim.workload import Plan

__all__ = ["bare_pycrdt", "main"]


def bare_pycrdt(plan: Plan) -> tuple[int, float]:
    """Apply the plan's edits to bare Docs; return (edits applied, seconds)."""
    devices = plan.params.devices
    t0 = time.process_time()
    docs: list[dict[str, Doc[Any]]] = [{} for _ in range(devices)]
    captured: list[bytes] = []

    def doc(d: int, rid: str) -> Doc[Any]:
        x = docs[d].get(rid)
        if x is None:
            x = Doc(client_id=d + 1)
            x.observe(lambda e: captured.append(e.update) if isinstance(e, TransactionEvent) else None)
            docs[d][rid] = x
        return x

    for rid, values in plan.initial:
        m = doc(0, rid).get("f", type=Map)
        with m.doc.transaction():
            for k, v in values.items():
                m[k] = orjson.dumps(v).decode()
        for d in range(1, devices):
            doc(d, rid).apply_update(doc(0, rid).get_update())
    n = 0
    for op in plan.ops:
        target = doc(op.device, op.record)
        captured.clear()
        m = target.get("f", type=Map)
        with target.transaction():
            if op.kind == "delete":
                m["@deleted"] = "true"
            for k, v in op.values.items():
                m[k] = orjson.dumps(v).decode()
        update = captured[-1]
        for d in range(devices):
            if d != op.device:
                doc(d, op.record).apply_update(update)
        n += 1
    return n, time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--devices", type=int, default=5)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--edits", type=int, default=5000)
    ap.add_argument("--strategies", default="crdt,lww-field,lww-record,lww-patch")
    args = ap.parse_args()
    plan = make_plan(Params(seed=args.seed, devices=args.devices, records=args.records, edits=args.edits))
    n, secs = bare_pycrdt(plan)
    base = n / secs
    print(f"{args.devices} devices, {args.records} records, {args.edits} edits (seed {args.seed})")
    print(f"{'bare pycrdt Docs':<18} {base:>10,.0f} edits/s  ({n} edits in {secs:.2f} s)   ratio 1.000")
    for s in [x.strip() for x in args.strategies.split(",") if x.strip()]:
        r = run_plan(plan, cast(Strategy, s))
        rate = r.ops_done / r.cpu_s
        print(f"{'sim ' + s:<18} {rate:>10,.0f} edits/s  ({r.ops_done} edits in {r.cpu_s:.2f} s)"
              f"   ratio {rate / base:.4f}")


if __name__ == "__main__":
    main()
