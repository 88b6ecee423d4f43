"""What the relay writes per change: the index of records (``recs``) once per record, with its first
change; a full resync still finds every record, with its whole state."""

from __future__ import annotations

from pathlib import Path

from crdtsync import Replica
from crdtsync.demo import DEMO_SCHEMA
from crdtsync.protocol.events import Change
from crdtsync.relay.auth import Tokens
from crdtsync.relay.log import RelayLog
from crdtsync.store import MemoryStore, SQLiteStore
from crdtsync.store.base import Batch


def test_the_index_of_records_is_written_with_a_records_first_change_only(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "relay.db")
    try:
        lg = RelayLog(store, DEMO_SCHEMA)
        grant = Tokens(None).grant(None)
        assert grant is not None
        r = Replica(MemoryStore(), DEMO_SCHEMA, device="d", user="u")
        a = r.create("accounts", {"name": "A"})
        b = r.create("accounts", {"name": "B"})
        r.update("accounts", a, {"name": "A2"})
        changes = [Change(pc.id, pc.collection, pc.record, u) for pc, u in r.outgoing()]
        written: list[list[tuple[str | int, ...]]] = []
        for ch in changes:
            batch = Batch()
            out = lg.stage(batch, "d", grant, [ch])
            written.append(sorted(k for k in batch.saves if k[0] == "recs"))
            store.commit(batch)
            lg.committed(out.accepted)
        assert written == [[("recs", "accounts", a)], [("recs", "accounts", b)], []]
        assert store.load(("recs", "accounts", a)) == b"1"
        assert sorted((c, rid) for c, rid, _ in lg.scope_records(grant, None)) == sorted([("accounts", a),
                                                                                            ("accounts", b)])
        fresh = Replica(MemoryStore(), DEMO_SCHEMA, device="e", user="u")
        fresh.apply_remote([("accounts", a, lg.record_update("accounts", a))])
        got = fresh.get("accounts", a)
        assert got is not None and got["name"] == "A2"
    finally:
        store.close()


def test_an_empty_state_vector_is_told_apart_from_any_other() -> None:
    from pycrdt import Doc, Map

    from crdtsync.relay.clients import sv_is_empty

    assert sv_is_empty(b"\x00")
    for client in (1, 127, 128, 300, 2**31 - 1, 2**32 + 5):
        d = Doc(client_id=client)
        assert sv_is_empty(d.get_state())
        d["m"] = m = Map()
        for clock in range(130):  # clocks of one and two bytes
            m[str(clock)] = clock
            assert not sv_is_empty(d.get_state())
    assert sv_is_empty(b"\x02\x05\x00\x07\x00")  # two clients, both at 0
    assert not sv_is_empty(b"\x02\x05\x00\x07\x80\x01")  # the second at 128
