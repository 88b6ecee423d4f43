"""Databases given to the wrong program: ``crdtsync relay --db phone.db`` (a device's replica) started and
wrote the relay's keys into the device's file; ``--db mysql://x/y`` was taken for a SQLite path ("its
directory .../mysql:/x does not exist"); ``Replica.open`` of a relay's database made a replica in it. Each
is refused now, saying what the database is, and nothing is written. And a change the relay holds is
logged at INFO once, not at each sync of its device."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from crdtsync import LocalError, Replica
from crdtsync.cli import main
from crdtsync.store import SQLiteStore

from .conftest import BOUND, SCHEMA, RelayFactory, client, sync

ROOT = Path(__file__).resolve().parents[2]


def test_a_relay_refuses_a_devices_replica_and_writes_nothing_into_it(tmp_path: Path) -> None:
    phone = Replica.open(tmp_path / "phone.db", SCHEMA, device="phone", user="u")
    rid = phone.create("accounts", {"name": "Acme"})
    phone.close()
    store = SQLiteStore(tmp_path / "phone.db")
    before = store.load_range(())
    store.close()
    done = subprocess.run([sys.executable, "-m", "crdtsync", "relay", "--port", "0", "--db", "phone.db", "--schema",
                           "tests.sync.conftest:SCHEMA"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=BOUND, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("crdtsync relay: phone.db holds a device's replica (Replica.open), not a relay's "
                           "database: give the relay a database of its own\n")
    store = SQLiteStore(tmp_path / "phone.db")
    assert store.load_range(()) == before
    store.close()
    phone = Replica.open(tmp_path / "phone.db", SCHEMA, device="phone", user="u")
    assert len(phone.pending()) == 1 and phone.get("accounts", rid) is not None
    phone.close()


@pytest.mark.parametrize("db", ["mysql://relay:pw@db/relay", "sqlite:///relay.db", "https://example.com/x"])
def test_a_relay_refuses_a_url_of_another_kind_of_database(
        db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["relay", "--port", "0", "--db", db, "--schema", "tests.sync.conftest:SCHEMA"]) == 2
    scheme = db.split("://")[0]
    assert capsys.readouterr().err == (f"crdtsync relay: --db: unknown database URL scheme {scheme}://: the relay's "
                                       "database is a SQLite file or a PostgreSQL URL (postgresql://...)\n")
    assert list(tmp_path.iterdir()) == []  # (and the password is not shown)


async def test_a_replica_refuses_a_relays_database(make_relay: RelayFactory, make_replica: Callable[..., Replica],
                                                   tmp_path: Path) -> None:
    relay = await make_relay()
    a = make_replica("a")
    a.create("accounts", {"name": "Acme"})
    async with client(a, relay.url) as c:
        await sync(c)
    await relay.stop()
    store = SQLiteStore(relay.path)
    before = store.load_range(())
    store.close()
    with pytest.raises(LocalError, match="is a relay's database, not a device's replica"):
        Replica.open(relay.path, SCHEMA, device="phone", user="u")
    store = SQLiteStore(relay.path)
    assert store.load_range(()) == before
    store.close()


async def test_a_held_change_is_logged_at_info_once(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], caplog: pytest.LogCaptureFixture) -> None:
    relay = await make_relay()
    a, b = make_replica("a"), make_replica("b")
    rid = a.create("accounts", {"name": "Acme"})
    b.import_updates(a.export_updates())  # b builds on a write of a's the relay never gets: held at each sync
    b.update("accounts", rid, {"employees": 3})
    with caplog.at_level(logging.DEBUG, logger="crdtsync.relay"):
        async with client(b, relay.url) as cb:
            for _ in range(3):
                assert (await sync(cb)).held == 1
    held = [r for r in caplog.records if r.getMessage().startswith("holding back b change")]
    assert [(r.levelno, " again:" in r.getMessage()) for r in held] == \
        [(logging.INFO, False), (logging.DEBUG, True), (logging.DEBUG, True)]
