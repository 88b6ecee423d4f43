"""``Replica.query()`` and ``conflicts()`` on a device's SQLite store, against the full-decode scan.

The baseline, measured in the same run on the same store, is what both did before their fast paths:
decode every row whole (each field through its type, a ``Record`` built by its ``__init__``), then filter
and sort in Python (``full_decode_query``, ``full_decode_conflicts``). The fast paths skip rows by their
bytes, read only the fields a ``where`` or ``order_by`` names, and decode whole only the rows returned
(``crdtsync/replica/rows.py``). Each query's results are checked equal to the baseline's before timing.

Records: work orders of a field-service app (``SCHEMA``): a state of five, a technician of two, a
priority 1-5, one in 100 linked to an account, one in 50 with an open conflict.

    PYTHONPATH=. python -m bench.bench_query [--sizes 1000,5000,20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from crdtsync import Bool, Collection, Counter, Date, Int, Record, Ref, Replica, Schema, Set, Str, Text
from crdtsync.model.state import UNWRITTEN, Candidate, Conflict
from crdtsync.replica.rows import _cand_field, _ordered, _same, decode_value

__all__ = ["SCHEMA", "full_decode_conflicts", "full_decode_query", "full_decode_row", "main"]

STATES = ["open", "scheduled", "in_progress", "done", "cancelled"]
SCHEMA = Schema(
    Collection("accounts", {"name": Str(required=True)}),
    Collection("work_orders", {"title": Str(required=True), "account": Ref("accounts"),
                               "state": Str(choices=STATES), "technician": Str(), "priority": Int(min=1, max=5),
                               "billable": Bool(), "due": Date(), "tags": Set(Str()), "notes": Text(),
                               "parts_used": Counter()}),
)


def full_decode_row(coll: Collection, record_id: str, raw: bytes) -> Record:
    """A row decoded as ``rows.decode_row`` did before its fast paths: every field through its type."""
    r = orjson.loads(raw)
    fields = {n: decode_value(coll.fields.get(n), v) for n, v in r["f"].items()}
    names = {n: UNWRITTEN[f.merge] for n, f in coll.fields.items()}
    others = fields.keys() != names.keys()
    if others:
        fields = {n: fields.get(n, v) for n, v in names.items()}
    conflicts = tuple(
        Conflict(coll.name, record_id, c["f"], c["k"],
                 tuple(Candidate(decode_value(_cand_field(coll, c["k"], c["f"], i), v), d, u, t)
                       for i, (v, d, u, t) in enumerate(c["v"])))
        for c in r["c"] if not others or c["f"] in names or c["f"] == "deleted")
    by = {n: Candidate(None, d, u, t) for n, (d, u, t) in r["b"].items() if not others or n in names}
    v = r.get("v")
    return Record(coll.name, record_id, fields, r["s"], conflicts, r["d"], r["e"], r["u"], by,
                  dict(v) if isinstance(v, dict) else None)


def _all(replica: Replica, coll: Collection) -> list[Record]:
    """Every record of ``coll``: each row decoded whole, the overlay (rows not written yet) as it is."""
    overlay = replica._overlay(coll)
    out = [full_decode_row(coll, str(k[2]), raw) for k, raw in replica.store.iter_range(("row", coll.name))
           if str(k[2]) not in overlay]
    out += [rec for rec in overlay.values() if rec is not None]
    return sorted(out, key=lambda rec: rec.id)


def full_decode_query(replica: Replica, collection: str, where: Mapping[str, Any] | None = None, *,
                      include_deleted: bool = False, order_by: str | None = None, descending: bool = False,
                      limit: int | None = None) -> list[Record]:
    """``Replica.query`` as a plain filter over every record decoded whole (its order as documented)."""
    coll = replica.schema.collection(collection)
    out = [rec for rec in _all(replica, coll) if (include_deleted or not rec.deleted)
           and all(_same(rec.fields.get(k), v) for k, v in (where or {}).items())]
    if order_by is not None:
        out = [x for _, x in _ordered([(rec.fields.get(order_by), rec) for rec in out], descending)]  # type: ignore[misc]
    return out if limit is None else out[:limit]


def full_decode_conflicts(replica: Replica) -> list[Conflict]:
    """``Replica.conflicts`` from every record decoded whole."""
    return [c for coll in replica.schema for rec in _all(replica, coll) for c in rec.conflicts]


def build(path: Path, n: int, seed: int = 1) -> Replica:
    """A device store of ``n`` work orders merged from two other devices (some edited concurrently)."""
    rng = random.Random(seed)
    src = Replica.open(":memory:", SCHEMA, device="office", user="dispatch")
    acc = src.create("accounts", {"name": "Acme"}, id="acc-1")
    ids = []
    for i in range(n):
        ids.append(src.create("work_orders", {
            "title": f"WO {i}", "account": acc if i % 100 == 0 else None, "state": rng.choice(STATES),
            "technician": rng.choice(["alice", "bob"]), "priority": rng.randint(1, 5),
            "billable": rng.random() < 0.5, "due": dt.date(2026, 1, 1) + dt.timedelta(days=i % 90),
            "tags": {"urgent"} if i % 7 == 0 else set()}, id=f"wo-{i:06d}"))
    other = Replica.open(":memory:", SCHEMA, device="van", user="bob")
    other.import_updates(src.export_updates())
    for i in range(0, n, 50):  # the same field edited on both: an open conflict
        src.update("work_orders", ids[i], {"state": "done"})
        other.update("work_orders", ids[i], {"state": "cancelled"})
    r = Replica.open(path, SCHEMA, device="tablet", user="alice")
    r.import_updates(src.export_updates())
    r.import_updates(other.export_updates())
    return r


def _best(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def _cases(r: Replica) -> list[tuple[str, Callable[[], object], Callable[[], object]]]:
    """Each query timed: its label, the baseline, the replica's call (their results checked equal)."""
    cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = []
    for label, kwargs in [("where state='open'", {"where": {"state": "open"}}),
                          ("where account=X (1%)", {"where": {"account": "acc-1"}}),
                          ("where billable=True", {"where": {"billable": True}}),
                          ("order_by priority limit 20", {"order_by": "priority", "limit": 20}),
                          ("where tech, order_by due desc, 20",
                           {"where": {"technician": "bob"}, "order_by": "due", "descending": True, "limit": 20})]:
        def fast(kw: dict[str, Any] = kwargs) -> list[Record]:
            return r.query("work_orders", **kw)

        def full(kw: dict[str, Any] = kwargs) -> list[Record]:
            return full_decode_query(r, "work_orders", **kw)
        assert fast() == full(), label
        cases.append((label, full, fast))
    assert r.conflicts() == full_decode_conflicts(r)
    cases.append(("conflicts()", lambda: full_decode_conflicts(r), r.conflicts))
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,5000,20000")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"{'records':>8} {'query':<34} {'full decode ms':>14} {'fast ms':>9} {'full/fast':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            r = build(Path(tmp) / f"d{n}.db", n)
            r.close()  # reopened: every row written, read from the file
            r = Replica.open(Path(tmp) / f"d{n}.db", SCHEMA, device="tablet", user="alice")
            cases = _cases(r)
            for label, full, fast in cases:
                t_full, t_fast = _best(full, args.rounds), _best(fast, args.rounds)
                print(f"{n:>8} {label:<34} {t_full:>14.1f} {t_fast:>9.1f} {t_full / t_fast:>8.1f}x")
            r.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
