"""The strategy each collection of a replica's store was written under, and the check that the schema's
strategy can read what it holds.

The strategies write a record in one of two document layouts (``model/layouts.py``): ``crdt`` and
``lww-field`` per-field slots, ``lww-record`` and ``lww-patch`` drafts. A strategy cannot read the other
layout: opened under it, a store's records read as missing or deleted, writes failed, and what they wrote
made the record unreadable under either strategy and refused by every other replica. So
``("meta", "strategy", collection)`` holds the strategy a collection was last opened under, and opening the
store with a schema that gives the collection a strategy of the other layout raises ``StrategyMismatch``
before anything is written. A switch within a layout (``crdt`` to ``lww-field`` and back) is allowed, and
recorded.

A store written by a crdtsync from before the key has none: the first open (after the upgrade of the
store's key layout, ``layout.py``, which any open of such a store makes) tells the layout from what the
store holds (``infer_layout``: the document of the collection's first stored record, or of its first
record with pending changes), refuses a schema of the other layout as above, and records the schema's
strategy (for a collection with no record, whatever the schema gives it). Only that first record is read:
a store that an earlier crdtsync already switched between layouts holds records of both, and the other
layout's ones raise ``StrategyMismatch`` when written (``model/layouts.record_mismatch``).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import StrategyMismatch
from ..model.layouts import LAYOUTS, Layout, first_layout, layout_of, layout_strategies, layout_text, strategies_text
from ..schema import Collection, Schema
from ..store.base import Batch, ByteStore
from .docs import RecordDocs
from .outbox import Outbox

__all__ = ["infer_layout", "keep_strategies", "refuse_other_layout", "stored_strategies", "strategy_key"]


def strategy_key(collection: str) -> tuple[str, str, str]:
    return ("meta", "strategy", collection)


def stored_strategies(store: ByteStore, schema: Schema) -> dict[str, str | None]:
    """The strategy each collection of ``schema`` was last opened under in ``store`` (None: not kept, or not
    one this crdtsync knows: judged by the records then, as for a store from before the key)."""
    names = [c.name for c in schema]
    raws = store.load_many([strategy_key(n) for n in names])
    out: dict[str, str | None] = {}
    for n, raw in zip(names, raws, strict=True):
        name = raw.decode(errors="replace") if raw is not None else None
        out[n] = name if name in LAYOUTS else None
    return out


def refuse_other_layout(where: str, coll: Collection, held: str | None, layout: Layout | None = None) -> None:
    """Raise ``StrategyMismatch`` when ``coll.strategy`` writes another layout than the store holds: that of
    strategy ``held``, or ``layout`` (told from the records, for a store that kept no strategy)."""
    if held is not None:
        layout = LAYOUTS[held]
    if layout is None or layout == layout_of(coll.strategy):
        return
    known = held if held is not None else " or ".join(layout_strategies(layout))
    holds = f"strategy {held!r} ({layout_text(layout)})" if held is not None else strategies_text(layout)
    raise StrategyMismatch(
        coll.name, None, known, coll.strategy,
        f"{where}: collection {coll.name!r} was written under {holds}, which {coll.strategy!r} cannot read: it "
        f"writes {layout_text(layout_of(coll.strategy))}, another document layout. Nothing was changed. Open the store "
        f"with a schema giving {coll.name!r} {' or '.join(map(repr, layout_strategies(layout)))}; to use "
        f"{coll.strategy!r}, start a new store (another file), which gets its records from a relay or an "
        f"export under {strategies_text(layout_of(coll.strategy))}")


def infer_layout(store: ByteStore, docs: RecordDocs, outbox: Outbox, collection: str) -> Layout | None:
    """The layout of a collection's records in a store that kept no strategy, from the first record that
    holds any content: the first stored (snapshot or update), else the first with pending changes only.
    None: the store holds no record of it."""
    ids: list[str] = []
    for kind in ("snap", "upd"):
        for key, _ in store.load_range((kind, collection), limit=1):
            ids.append(str(key[2]))
    ids += sorted(outbox.local_records(collection))[:1]
    for rid in ids:
        layout = first_layout(docs.get(collection, rid).doc.raw_slots())
        if layout is not None:
            return layout
    return None


def keep_strategies(where: str, store: ByteStore, schema: Schema, held: Mapping[str, str | None],
                    docs: RecordDocs, outbox: Outbox) -> Batch:
    """Check the collections ``stored_strategies`` found no strategy for (inferring their layout), and stage
    the schema's strategy of every collection whose kept one differs. Raises ``StrategyMismatch`` (nothing
    staged is then stored)."""
    batch = Batch()
    read = False
    for coll in schema:
        last = held.get(coll.name)
        if last is None:
            read = True
            refuse_other_layout(where, coll, None, infer_layout(store, docs, outbox, coll.name))
        if last != coll.strategy:
            batch.save(strategy_key(coll.name), coll.strategy.encode())
    if read:
        docs.forget()  # loaded for that only
    return batch
