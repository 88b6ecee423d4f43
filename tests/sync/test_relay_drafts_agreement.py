"""The relay and the simulator's server agree on the drafts strategies, fed the same uploads in the same order.

Three devices (real ``Replica``s on memory stores) edit, delete and create two records and sync at random
(seeded). Each upload goes to the relay's log (``RelayLog.stage`` + a real commit) and to ``SimServer.upload``,
in the same order; devices download from the relay only. After every sync both servers must hold the same
copy of every record (fields, deleted flag, number of applied drafts) and reject the same drafts as ``gone``
(the relay also *holds* a record's later changes behind a rejected one, which the simulator evaluates and
rejects). At the end, every device shows the relay's copy.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync import Replica
from crdtsync.model.drafts import DraftRecordDoc
from crdtsync.protocol import Change
from crdtsync.relay import Grant, RelayLog
from crdtsync.schema import Collection, Schema, Str
from crdtsync.sim.server import SimServer
from crdtsync.store.base import Batch
from crdtsync.store.memory import MemoryStore

Step = tuple[str, int, int, str, int]

STEPS = st.lists(st.tuples(st.sampled_from(["edit", "edit", "edit", "delete", "create", "sync", "sync"]),
                           st.integers(0, 2), st.integers(0, 1), st.sampled_from(["name", "stage"]),
                           st.integers(0, 9)), max_size=40)


class World:
    def __init__(self, strategy: str) -> None:
        self.schema = Schema(Collection("deals", {"name": Str(), "stage": Str()}, strategy=strategy))
        self.relay = RelayLog(MemoryStore(), self.schema)
        self.sim = SimServer(self.schema)
        self.grant = Grant.open()
        ticks = iter(range(1_767_225_600_000, 1_767_225_600_000 + 10**9, 7))
        self.devices = [Replica(MemoryStore(), self.schema, device=f"d{i}", user="u", wall=lambda: next(ticks),
                                random_bytes=random.Random(i).randbytes) for i in range(3)]
        self.cursors = [0, 0, 0]

    def act(self, kind: str, i: int, r: int, f: str, v: int) -> None:
        dev, rid = self.devices[i], f"r{r}"
        rec = dev.get("deals", rid)
        if kind == "sync":
            self.sync(i)
        elif kind == "create":
            if rec is None:
                dev.create("deals", {f: f"{f}{v}"}, id=rid)
        elif rec is not None and not rec.deleted and rec.status != "error":
            if kind == "delete":
                dev.delete("deals", rid)
            else:
                dev.update("deals", rid, {f: f"{f}{v}@d{i}"})

    def sync(self, i: int) -> None:
        dev = self.devices[i]
        out = dev.outgoing()
        batch = Batch()
        o = self.relay.stage(batch, dev.device, self.grant,
                             [Change(p.id, p.collection, p.record, u) for p, u in out])
        self.relay.store.commit(batch)
        self.relay.committed(o.accepted)
        s = self.sim.upload(dev.device, [(p.collection, p.record, p.id, u) for p, u in out], now=0)
        relay_rejected = {(r.change_id, r.code) for r in o.rejected}
        sim_rejected = {(cid, code) for cid, code, _ in s.rejected}
        assert relay_rejected <= sim_rejected and {c for c, _ in sim_rejected - relay_rejected} <= set(o.held)
        assert {c for c, _ in relay_rejected} == {c for c, _ in sim_rejected} - set(o.held)
        dev.acknowledge(o.ok)
        for rj in o.rejected:
            dev.reject(rj.change_id, rj.code, rj.reason)
        for p in dev.pending():
            if p.status == "error":  # what the legacy apps let the user do: discard the record's changes
                dev.discard_record(p.collection, p.record)
        items, to = self.relay.delta(self.grant, dev.device, self.cursors[i], None, max_items=100_000)
        dev.apply_remote([(it.collection, it.record, it.update) for it in items])
        self.cursors[i] = to
        self.compare()

    def images(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for rid in self.relay.docs.record_ids("deals"):
            doc = self.relay.docs.get("deals", rid).doc
            assert isinstance(doc, DraftRecordDoc)
            img = doc.image()
            out[rid] = None if img is None else (img.fields, img.deleted, img.n)
        return out

    def compare(self) -> None:
        relay = self.images()
        sim = {}
        for (_, rid), doc in self.sim._docs.items():
            img = doc.image()
            if img is not None and img.n:
                sim[rid] = (img.fields, img.deleted, img.n)
        assert {k: v for k, v in relay.items() if v is not None} == sim


@settings(derandomize=True, max_examples=60, deadline=None, database=None)
@given(strategy=st.sampled_from(["lww-record", "lww-patch"]), steps=STEPS)
def test_the_relay_and_the_simulators_server_agree(strategy: str, steps: list[Step]) -> None:
    w = World(strategy)
    for step in steps:
        w.act(*step)
    for _ in range(2):
        for i in range(3):
            w.sync(i)
    for dev in w.devices:
        assert dev.pending() == []
        for rid, img in w.images().items():
            rec = dev.get("deals", rid)
            if img is None or img[2] == 0:
                continue
            assert rec is not None and rec.deleted == img[1]
            assert {k: v for k, v in rec.fields.items() if v is not None} == \
                {k: v for k, v in img[0].items() if v is not None}
