"""apply_remote(meta=...): app metadata (a sync cursor) is stored in the same commit as the merge, so both
or neither are kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crdtsync import MalformedUpdate, Replica
from crdtsync.demo import DEMO_SCHEMA


def test_meta_is_written_with_the_merge_and_not_without_it(tmp_path: Path) -> None:
    with Replica.open(tmp_path / "a.db", DEMO_SCHEMA, device="a", user="alice") as a:
        rid = a.create("accounts", {"name": "Acme"})
        [(_, update)] = a.outgoing()
    with Replica.open(tmp_path / "b.db", DEMO_SCHEMA, device="b", user="bob") as b:
        [rec] = b.apply_remote([("accounts", rid, update)], meta={"sync.cursor": b"7"})
        assert rec.fields["name"] == "Acme" and b.get_meta("sync.cursor") == b"7"
        with pytest.raises(MalformedUpdate):
            b.apply_remote([("accounts", "other", os.urandom(40))], meta={"sync.cursor": b"8"})
        assert b.get_meta("sync.cursor") == b"7"  # the failed merge stored neither
        assert b.apply_remote([], meta={"sync.cursor": b"9", "other": b"x"}) == []  # an empty page: meta only
    with Replica.open(tmp_path / "b.db", DEMO_SCHEMA, device="b", user="bob") as b:
        assert b.get_meta("sync.cursor") == b"9" and b.get_meta("other") == b"x"
        assert b.get("accounts", rid) is not None and b.get("accounts", "other") is None
