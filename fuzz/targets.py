"""Fuzz targets: functions that take arbitrary bytes and must never fail in an unplanned way.

Each target raises ``AssertionError`` on a real bug (an unexpected exception, a state change after a
refused input); expected refusals (``CrdtSyncError``) are fine. Used by ``fuzz/run.py`` (atheris or a
seeded mutation loop) and by the short seeded pass in ``tests/test_fuzz.py``.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable

from crdtsync import (
    Bool,
    Collection,
    Counter,
    CrdtSyncError,
    Date,
    Float,
    Int,
    Ref,
    Replica,
    Schema,
    Set,
    Str,
    Text,
)

__all__ = ["SCHEMA", "TARGETS", "import_target", "seed_corpus"]

SCHEMA = Schema(
    Collection("accounts", {"name": Str(required=True, max_length=50), "n": Int(min=0), "x": Float(),
                            "ok": Bool(), "day": Date(), "notes": Text(), "tags": Set(Str()),
                            "visits": Counter(), "parent": Ref("accounts")}),
    Collection("visits", {"account": Ref("accounts"), "note": Str()}, delete_policy="edit-wins"),
)


def _replica(device: str) -> Replica:
    """A replica with a fake clock and seeded randomness, so that the corpus is the same on every run."""
    rng = random.Random(device)
    ticks = iter(range(1_700_000_000_000, 1_800_000_000_000, 7))
    return Replica.open(":memory:", SCHEMA, device=device, user="u", wall=lambda: next(ticks),
                        random_bytes=rng.randbytes)


def seed_corpus() -> list[bytes]:
    """Valid exports to mutate: creates, edits, conflicts, deletes, every field kind."""
    a, b = _replica("dev-a"), _replica("dev-b")
    rid = a.create("accounts", {"name": "Acme", "n": 3, "x": 1.5, "ok": True, "day": dt.date(2026, 1, 2),
                                "notes": "hello", "tags": {"a", "b"}})
    out = [a.export_updates()]
    b.import_updates(out[0])
    a.update("accounts", rid, {"name": "A1", "notes": "hello world", "tags": {"b", "c"}})
    b.update("accounts", rid, {"name": "B1"})
    b.increment("accounts", rid, "visits", 4)
    v = b.create("visits", {"account": rid, "note": "x"})
    a.import_updates(b.export_updates())
    a.delete("accounts", rid)
    b.delete("visits", v)
    out += [a.export_updates(), b.export_updates(), b.export_updates(since=a.state_vectors())]
    return out


def _snapshot(r: Replica) -> list[object]:
    return [(rec.id, rec.fields, rec.deleted, rec.conflicts) for c in ("accounts", "visits")
            for rec in r.query(c, include_deleted=True)]


def import_target() -> Callable[[bytes], None]:
    base = seed_corpus()[0]

    def run(data: bytes) -> None:
        r = _replica("fuzz-target")
        r.import_updates(base)
        before = _snapshot(r)
        try:
            r.import_updates(data)
        except CrdtSyncError:
            assert _snapshot(r) == before, "a refused import changed the replica"
            # the replica must still work after a refused import
            r.update("accounts", before[0][0], {"n": 1})  # type: ignore[index]
            return
        except Exception as e:  # pragma: no cover - this is the bug being hunted
            raise AssertionError(f"import_updates raised {type(e).__name__}: {e}") from e
        _snapshot(r)  # reading every accepted record must work

    return run


TARGETS: dict[str, Callable[[], Callable[[bytes], None]]] = {"import": import_target}
