"""One Replica shared by several threads (README: share one handle between the parts of an app): its
public methods run one at a time, so nothing raises, no write is lost, and an export holds every record."""

from __future__ import annotations

import inspect
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtsync import Collection, Counter, Int, Replica, Schema, Set, Str, Text, ValidationError
from crdtsync.replica.locking import LOCKED

SCHEMA = Schema(Collection("accounts", {"name": Str(), "n": Int(), "visits": Counter(), "notes": Text(),
                                        "tags": Set(Str())}))
THREADS = 4
ROUNDS = 150


@pytest.fixture
def busy() -> Iterator[None]:
    """Threads switch every microsecond instead of every 5 ms: without the lock, two of them meet inside
    pycrdt in almost every run."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@pytest.mark.parametrize("where", ["file", "memory"])
def test_threads_hammering_one_replica_lose_nothing(tmp_path: Path, busy: None, where: str) -> None:
    path = tmp_path / "a.db" if where == "file" else ":memory:"
    r = Replica.open(path, SCHEMA, device="a", user="u", synchronous="OFF")
    shared = r.create("accounts", {"name": "shared"})
    events: list[str] = []
    r.subscribe(lambda ev: events.append(ev.id) if ev.origin == "local" else None)
    errors: list[BaseException] = []
    made: list[str] = []

    def work(k: int) -> None:
        try:
            for i in range(ROUNDS):
                r.increment("accounts", shared, "visits", 1)
                rid = r.create("accounts", {"name": f"t{k}-{i}", "tags": {f"k{k}"}})
                made.append(rid)
                r.update("accounts", rid, {"notes": f"note {i}", "n": i})
                r.get("accounts", shared)
                if i % 25 == 0:
                    r.query("accounts")
                    r.export_updates()
                    r.acknowledge([p.id for p in r.pending()[:5]])
        except BaseException as e:  # a pyo3 PanicException derives from BaseException
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    rec = r.get("accounts", shared)
    assert rec is not None and rec.fields["visits"] == THREADS * ROUNDS
    assert len(events) == 3 * THREADS * ROUNDS  # every local write, once
    fresh = Replica.open(":memory:", SCHEMA, device="b", user="u")
    fresh.import_updates(r.export_updates())
    assert sorted(x.id for x in fresh.query("accounts")) == sorted([shared, *made])
    got = fresh.get("accounts", shared)
    assert got is not None and got.fields["visits"] == THREADS * ROUNDS
    for rid in made[:: THREADS * 7]:
        x = fresh.get("accounts", rid)
        assert x is not None and x.fields["notes"].startswith("note ")
    r.close()


def test_every_public_method_holds_the_lock() -> None:
    public = [n for n in dir(Replica) if not n.startswith("_")
              and inspect.isfunction(inspect.getattr_static(Replica, n))]
    assert {"update", "get", "query", "import_updates", "close", "subscribe"} <= set(public)
    assert [n for n in public if not getattr(getattr(Replica, n), LOCKED, False)] == []


def test_a_listener_may_call_the_replica_from_inside_a_write() -> None:
    """The lock is reentrant: a listener runs with it held (a plain lock would hang here: bounded)."""
    r = Replica.open(":memory:", SCHEMA, device="a", user="u")
    seen: list[object] = []
    r.subscribe(lambda ev: seen.append(r.get("accounts", ev.id)))
    made: list[str] = []
    t = threading.Thread(target=lambda: made.append(r.create("accounts", {"name": "x"})), daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive() and len(made) == 1
    assert len(seen) == 1 and getattr(seen[0], "id", None) == made[0]


def test_methods_that_take_the_lock_themselves_take_it() -> None:
    """``update`` takes the lock itself (``holds_lock``), not through the wrapper: it must still take it,
    and give it back when it raises."""
    class Recording:
        def __init__(self) -> None:
            self.inner = threading.RLock()
            self.held = 0
            self.taken = 0

        def acquire(self) -> bool:
            self.inner.acquire()
            self.held += 1
            self.taken += 1
            return True

        def release(self) -> None:
            self.held -= 1
            self.inner.release()

        def __enter__(self) -> bool:
            return self.acquire()

        def __exit__(self, *exc: object) -> None:
            self.release()

    r = Replica.open(":memory:", SCHEMA, device="a", user="u")
    rid = r.create("accounts", {"name": "x"})
    lock = Recording()
    r._lock = lock  # type: ignore[assignment]
    seen: list[int] = []
    r.subscribe(lambda ev: seen.append(lock.held))
    r.update("accounts", rid, {"name": "y"})
    assert lock.taken >= 1 and lock.held == 0 and seen == [1]
    with pytest.raises(ValidationError):
        r.update("accounts", rid, {"nosuch": 1})
    assert lock.held == 0
    r.close()
