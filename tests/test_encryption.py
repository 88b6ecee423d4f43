"""Encryption at rest (AES-GCM) with an app-provided key: right key, wrong key, no key, tampering."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from crdtsync import EncryptionError, Replica, WrongKeyError
from crdtsync.demo import DEMO_SCHEMA

KEY = bytes(range(32))


def raw_rows(path: Path) -> list[tuple[bytes, bytes]]:
    """The table as SQLite holds it, read around crdtsync."""
    db = sqlite3.connect(path)
    try:
        return [(bytes(k), bytes(v)) for k, v in db.execute("SELECT k, v FROM kv ORDER BY k")]
    finally:
        db.close()


def make(path: Path, key: bytes | str) -> str:
    with Replica.open(path, DEMO_SCHEMA, device="phone", user="alice", key=key) as r:
        rid = r.create("accounts", {"name": "Acme Secret Corp", "notes": "the buyer is Dana"})
        r.update("accounts", rid, {"employees": 4242})
        return rid


@pytest.mark.parametrize("key", [KEY, KEY[:16], "correct horse battery staple"])
def test_right_key_reads_everything_back(tmp_path: Path, key: bytes | str) -> None:
    path = tmp_path / "enc.db"
    rid = make(path, key)
    with Replica.open(path, DEMO_SCHEMA, device="phone", user="alice", key=key) as r:
        rec = r.get("accounts", rid)
        assert rec is not None and rec.fields["name"] == "Acme Secret Corp" and rec.fields["employees"] == 4242
        assert len(r.pending()) == 2
        assert r.history("accounts", rid)[0].value == "Acme Secret Corp"
        r.update("accounts", rid, {"employees": 1})


def test_values_are_not_readable_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "enc.db"
    make(path, KEY)
    blob = b"".join(v for _, v in raw_rows(path))
    for secret in (b"Acme Secret Corp", b"the buyer is Dana", b"alice", b"4242"):
        assert secret not in blob
    plain = tmp_path / "plain.db"
    with Replica.open(plain, DEMO_SCHEMA, device="phone", user="alice") as r:
        r.create("accounts", {"name": "Acme Secret Corp"})
    assert b"Acme Secret Corp" in b"".join(v for _, v in raw_rows(plain))  # the check above can fail


@pytest.mark.parametrize("wrong", [bytes(32), KEY[::-1], "a passphrase", KEY[:16]])
def test_wrong_key_raises_clearly_and_changes_nothing(tmp_path: Path, wrong: bytes | str) -> None:
    path = tmp_path / "enc.db"
    rid = make(path, KEY)
    before = raw_rows(path)
    with pytest.raises(WrongKeyError, match="key"):
        Replica.open(path, DEMO_SCHEMA, device="phone", user="alice", key=wrong)
    assert raw_rows(path) == before
    with Replica.open(path, DEMO_SCHEMA, device="phone", user="alice", key=KEY) as r:
        assert r.get("accounts", rid) is not None


def test_missing_key_and_key_for_a_plain_store(tmp_path: Path) -> None:
    enc, plain = tmp_path / "enc.db", tmp_path / "plain.db"
    make(enc, KEY)
    before = raw_rows(enc)
    with pytest.raises(EncryptionError, match="encrypted"):
        Replica.open(enc, DEMO_SCHEMA, device="phone", user="alice")
    assert raw_rows(enc) == before
    with Replica.open(plain, DEMO_SCHEMA, device="phone", user="alice") as r:
        r.create("accounts", {"name": "x"})
    before = raw_rows(plain)
    with pytest.raises(EncryptionError, match="unencrypted"):
        Replica.open(plain, DEMO_SCHEMA, device="phone", user="alice", key=KEY)
    assert raw_rows(plain) == before


@pytest.mark.parametrize("bad", [b"short", bytes(20), ""])
def test_malformed_keys_are_refused(tmp_path: Path, bad: bytes | str) -> None:
    with pytest.raises(EncryptionError):
        Replica.open(tmp_path / "x.db", DEMO_SCHEMA, device="phone", user="alice", key=bad)


def test_tampered_or_swapped_values_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "enc.db"
    rid = make(path, KEY)
    db = sqlite3.connect(path)
    rows = db.execute("SELECT k, v FROM kv").fetchall()
    row_keys = [k for k, _ in rows if b"row" in bytes(k)]
    assert row_keys
    # move one record's encrypted row under another key: the key is bound in, so it does not open
    with Replica.open(path, DEMO_SCHEMA, device="phone", user="alice", key=KEY) as r:
        other = r.create("accounts", {"name": "Other"})
    rows = dict(db.execute("SELECT k, v FROM kv").fetchall())
    k1 = next(k for k in rows if b"row" in bytes(k) and rid.encode() in bytes(k))
    k2 = next(k for k in rows if b"row" in bytes(k) and other.encode() in bytes(k))
    db.execute("UPDATE kv SET v = ? WHERE k = ?", (rows[k1], k2))
    db.commit()
    db.close()
    with Replica.open(path, DEMO_SCHEMA, device="phone", user="alice", key=KEY) as r:
        assert r.get("accounts", rid) is not None
        with pytest.raises(WrongKeyError, match="tampered"):
            r.get("accounts", other)


def test_a_key_for_a_plain_store_is_not_a_wrong_key(tmp_path: Path) -> None:
    """``WrongKeyError`` means another key may open the store (ask the user again); no key opens a plain
    store, so a key given for one raises the base ``EncryptionError`` (as README says)."""
    plain = tmp_path / "plain.db"
    Replica.open(plain, DEMO_SCHEMA, device="phone", user="alice").close()
    with pytest.raises(EncryptionError, match="open it without a key") as e:
        Replica.open(plain, DEMO_SCHEMA, device="phone", user="alice", key=KEY)
    assert not isinstance(e.value, WrongKeyError)
