"""A relay whose SQLite disk is full stops saying so. Its CRITICAL line and the command's last line said
``OperationalError('cannot rollback - no transaction is active')``: SQLite had rolled the transaction back
by itself on ``SQLITE_FULL``, the store's ROLLBACK then failed, and that error replaced the one that said
why. The faults are real: a write the OS refuses (``RLIMIT_FSIZE``), a database capped at its size
(``PRAGMA max_page_count``), which SQLite reports as a full disk."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import crdtsync
from crdtsync import Replica, StoreFull
from crdtsync.store import SQLiteStore

from .conftest import BOUND, RelayFactory, client


def _cap(store: SQLiteStore) -> None:
    """No page more for ``store``'s file: its next commit that needs one fails with ``SQLITE_FULL``."""
    db = store._db
    assert db is not None
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")


#: a store whose writes fail for real once its files reach 256 KiB (``RLIMIT_FSIZE``: the WAL write of a
#: COMMIT fails, and SQLite rolls the whole transaction back by itself, as on a full disk); in a process of
#: its own, as the limit holds for every file the process writes
_FAILING_COMMIT = """
import os, resource, signal, sqlite3, sys
from crdtsync.store import Batch, SQLiteStore
store = SQLiteStore(sys.argv[1])
store.save(("relay", "head"), b"1")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
for j in range(100):
    batch = Batch()  # several keys, two tables: a BEGIN ... COMMIT transaction
    for i in range(50):
        batch.save(("rec", j, i), os.urandom(1000))
    batch.save(("log", j), b"y" * 3000)
    try:
        store.commit(batch)
    except sqlite3.OperationalError as e:
        print(repr(e), repr(e.__context__), store._db.in_transaction)
        break
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
store.commit(batch)  # space again: the store is usable
print(len(store.load_range(("log",))) == j + 1)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_commit_whose_write_fails_raises_sqlites_own_error(tmp_path: Path) -> None:
    root = Path(crdtsync.__file__).parents[1]
    done = subprocess.run([sys.executable, "-c", _FAILING_COMMIT, str(tmp_path / "relay.db")], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["OperationalError('disk I/O error') None False", "True"]


async def test_a_relay_on_a_full_disk_stops_naming_the_full_disk(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], caplog: pytest.LogCaptureFixture) -> None:
    relay = await make_relay()
    assert relay.relay is not None and relay.store is not None
    a = make_replica("a")
    for i in range(50):
        a.create("accounts", {"name": f"account {i} " + "x" * 100})
    _cap(relay.store)
    with caplog.at_level(logging.INFO, logger="crdtsync.relay"):
        async with client(a, relay.url) as c:
            syncing = asyncio.ensure_future(c.sync_now())
            await asyncio.wait_for(relay.relay.wait_stopped(), BOUND)
            syncing.cancel()
    failure = relay.relay.failure
    assert isinstance(failure, StoreFull) and failure.path == str(relay.path)
    assert isinstance(failure.__cause__, sqlite3.OperationalError) and "disk is full" in str(failure.__cause__)
    (critical,) = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "disk is full" in critical.getMessage() and "cannot rollback" not in caplog.text
    assert len(a.pending()) == 50  # nothing acknowledged, nothing lost
