"""Building a relay with N records, and a device that has synced them, in seconds rather than minutes.

Making a record through ``Replica.create`` and storing it through the relay costs a few milliseconds, so
100k records would take minutes. Instead a seed replica makes a few template records for real; their
create updates and the device's materialised rows are then written under N record ids, straight into the
two SQLite stores, in the layouts the relay (``crdtsync/relay/log.py``) and the replica
(``crdtsync/replica/docs.py``, ``rows.py``) document. A record document does not hold its own id, so a
template's update is a valid create of any record. ``build`` then checks the result with the relay's own
reader (``RelayLog``): the last log entries and a record decode as they should. The 100 remote changes of
the benchmark itself go through the real relay, which validates them against these stored records.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import orjson

from crdtsync.codec import write_bytes
from crdtsync.relay.auth import Tokens
from crdtsync.relay.log import RelayLog
from crdtsync.replica import Replica
from crdtsync.schema import Schema
from crdtsync.store.base import Batch
from crdtsync.store.sqlite import SQLiteStore

__all__ = ["Built", "build", "record_id"]

_CONFIRMED = b"\x00"
_SEED = "seed"
_DEV_USER = "dev"  # the user of every device on an open relay (no tokens file)


def record_id(i: int) -> str:
    return f"acct-{i:07d}"


@dataclass(frozen=True)
class Built:
    records: int
    relay_id: str
    templates: list[bytes]  # the create update of record i is templates[i % len(templates)]

    def update_of(self, i: int) -> bytes:
        return self.templates[i % len(self.templates)]


def _templates(schema: Schema, count: int) -> tuple[list[bytes], list[bytes]]:
    """``count`` accounts made by a seed device: their create updates and their rows once synced."""
    with Replica.open(":memory:", schema, device=_SEED, user=_DEV_USER) as seed:
        rng = random.Random(7)
        ids = [seed.create("accounts", {"name": f"Account {t}", "employees": rng.randrange(1, 500),
                                        "city": rng.choice(["Lyon", "Porto", "Turku", "Graz"])})
               for t in range(count)]
        out = seed.outgoing()
        updates = [u for _, u in out]
        seed.acknowledge([pc.id for pc, _ in out])
        rows = [seed.store.load(("row", "accounts", rid)) or b"" for rid in ids]
    return updates, rows


def build(relay_db: Path, device_db: Path, schema: Schema, records: int, *, device: str,
          templates: int = 16) -> Built:
    """Write a relay store with ``records`` accounts (one log entry each) and a device store that has all
    of them, synced, its cursor at the relay's head."""
    updates, rows = _templates(schema, templates)
    relay_id = random.Random(records).randbytes(8).hex()
    relay = SQLiteStore(relay_db, synchronous="OFF")
    dev = SQLiteStore(device_db, synchronous="OFF")
    try:
        rb, db = Batch(), Batch()
        rb.save(("relay", "id"), relay_id.encode())
        rb.save(("relay", "head"), str(records).encode())
        rb.save(("relay", "floor"), b"0")
        rb.save(("relay", "device", _SEED), _DEV_USER.encode())
        for i in range(records):
            rid, seq, update = record_id(i), i + 1, updates[i % templates]
            entry = bytearray()
            write_bytes(entry, orjson.dumps(["accounts", rid, _SEED, seq]))
            write_bytes(entry, update)
            rb.save(("log", seq), bytes(entry))
            rb.save(("dedup", _SEED, seq), str(seq).encode())
            rb.save(("recs", "accounts", rid), str(seq).encode())
            rb.save(("upd", "accounts", rid, 0), _CONFIRMED + update)
            db.save(("upd", "accounts", rid, 0), _CONFIRMED + update)
            db.save(("row", "accounts", rid), rows[i % templates])
        db.save(("meta", "app", "sync.cursor"), orjson.dumps({"relay": relay_id, "c": {"accounts": records}}))
        relay.commit(rb)
        dev.commit(db)
        _check(relay, schema, records, updates)
    finally:
        relay.close()
        dev.close()
    return Built(records, relay_id, updates)


def _check(store: SQLiteStore, schema: Schema, records: int, updates: list[bytes]) -> None:
    """The relay's own code reads what was written: its head, the last log entries, a record's state."""
    lg = RelayLog(store, schema)
    if lg.head != records:
        raise RuntimeError(f"relay layout mismatch: head {lg.head}, expected {records}")
    grant = Tokens(None).grant(None)
    if grant is None:
        raise RuntimeError("an open relay's grant is missing")
    items, to = lg.delta(grant, "nobody", max(0, records - 3), None)
    want = [record_id(i) for i in range(max(0, records - 3), records)]
    if [i.record for i in items] != want or to != records:
        raise RuntimeError(f"relay layout mismatch: delta gave {[i.record for i in items]} up to {to}")
    if lg.record_update("accounts", record_id(records - 1)) != updates[(records - 1) % len(updates)]:
        raise RuntimeError("relay layout mismatch: the record's stored state differs from its create")
