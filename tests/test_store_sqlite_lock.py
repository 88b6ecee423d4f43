"""One handle per SQLite file: a second open of a file that is open already fails at once, changing nothing.

Two replicas on one file each kept their own outbox, clock and cached documents and overwrote each other:
40 increments through two handles left 20.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crdtsync import Replica, SQLiteStore, StoreInUse
from crdtsync.demo import DEMO_SCHEMA
from crdtsync.store.base import Batch


def _files(path: Path) -> dict[str, bytes]:
    """The database's files (the database, its WAL...) and their contents."""
    return {p.name: p.read_bytes() for p in sorted(path.parent.iterdir()) if p.name.startswith(path.name)}


def test_a_second_store_on_an_open_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    first = SQLiteStore(path)
    first.commit(Batch({("a",): b"1"}))
    before = _files(path)
    with pytest.raises(StoreInUse, match=r"relay\.db is open already") as err:
        SQLiteStore(path, defer_sync=True)
    assert err.value.path == str(path)
    assert _files(path) == before
    first.commit(Batch({("b",): b"2"}))  # the first handle goes on as if nothing happened
    first.close()
    again = SQLiteStore(path)  # and once it is closed, the file opens
    assert again.load_many([("a",), ("b",)]) == [b"1", b"2"]
    again.close()


def test_a_second_replica_on_an_open_file_is_refused_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "phone.db"
    first = Replica.open(path, DEMO_SCHEMA, device="phone", user="alice")
    rid = first.create("accounts", {"name": "Acme"})
    before = _files(path)
    with pytest.raises(StoreInUse, match=r"phone\.db"):
        Replica.open(path, DEMO_SCHEMA, device="phone", user="alice")
    with pytest.raises(StoreInUse):  # an encrypted open too: the lock comes before the key is checked
        Replica.open(path, DEMO_SCHEMA, device="phone", user="alice", key=b"k" * 32)
    assert _files(path) == before
    for _ in range(20):
        first.increment("accounts", rid, "visits", 1)
    first.close()
    with Replica.open(path, DEMO_SCHEMA, device="phone", user="alice") as r:
        rec = r.get("accounts", rid)
        assert rec is not None and rec.fields["visits"] == 20
        assert len(r.pending()) == 21


def test_a_store_dropped_without_close_frees_its_file(tmp_path: Path) -> None:
    path = tmp_path / "phone.db"
    store = SQLiteStore(path)
    del store
    gc.collect()
    SQLiteStore(path).close()


HOLDER = textwrap.dedent("""
    import sys
    from crdtsync import Replica
    from crdtsync.demo import DEMO_SCHEMA
    r = Replica.open(sys.argv[1], DEMO_SCHEMA, device="phone", user="alice")
    print("open", flush=True)
    sys.stdin.read()  # until killed
""")


def test_another_process_holding_the_file_is_detected_and_its_death_frees_it(tmp_path: Path) -> None:
    path = tmp_path / "phone.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline() == "open\n"
        with pytest.raises(StoreInUse, match=r"phone\.db"):
            Replica.open(path, DEMO_SCHEMA, device="phone", user="alice")
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no close(): the OS drops the lock with the process
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stdin.close()
    with Replica.open(path, DEMO_SCHEMA, device="phone", user="alice") as r:
        assert r.pending() == []


def test_a_second_open_through_a_symlink_is_refused(tmp_path: Path) -> None:
    """The lock file sits beside the real file: a symlink to an open store names the same lock."""
    real = tmp_path / "real.db"
    link = tmp_path / "link.db"
    first = SQLiteStore(real)
    link.symlink_to(real)
    try:
        with pytest.raises(StoreInUse):
            SQLiteStore(link)
    finally:
        first.close()
