"""Which document layout each strategy writes, and which layout an entry of a document was written in. No I/O.

Every strategy keeps a record's content in the ``f`` root map of its Yjs document, in one of two layouts:

- ``slots`` (``crdt``, ``lww-field``): one slot per field and writer, ``field\\x1fwriter -> JSON {v, t, d, u,
  c}`` (``lww-field`` adds ``w``; see ``document.py``, ``slots.py``);
- ``drafts`` (``lww-record``, ``lww-patch``): one draft per change, ``@draft\\x1fwriter\\x1ft -> JSON {f, d, k,
  o, b, dv, u}``, and the server's copy ``@image -> JSON {f, d, n, a, t, by}`` (see ``drafts.py``).

A collection may move between the strategies of one layout (the other reads what it wrote); a strategy of
one layout cannot read a record written in the other, nor merge an update of it. ``entry_layout`` tells, from
one entry of the map, which layout wrote it (its key and its JSON's keys must both fit, so a malformed entry
is never taken for the other layout's), for errors that say what happened instead of "malformed".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import orjson

from ..clock import MAX_TIME
from ..errors import StrategyMismatch
from .slots import SEP

__all__ = [
    "DRAFT",
    "IMAGE",
    "LAYOUTS",
    "OTHER_LAYOUT",
    "Layout",
    "entry_layout",
    "first_layout",
    "foreign_entry",
    "layout_of",
    "layout_strategies",
    "layout_text",
    "record_mismatch",
    "strategies_text",
]

Layout = Literal["slots", "drafts"]

DRAFT = "@draft"
IMAGE = "@image"

#: the document layout of each strategy (``schema.STRATEGIES``)
LAYOUTS: dict[str, Layout] = {"crdt": "slots", "lww-field": "slots", "lww-record": "drafts",
                              "lww-patch": "drafts"}

#: what a refusal of an entry of the other layout says (``foreign_entry``): the relay adds its advice to a
#: reason that holds it, and a device's ``RecordBlocked`` gives its own
OTHER_LAYOUT = "written under another strategy (document layout)"

_WHAT: dict[Layout, str] = {"slots": "per-field slots", "drafts": "drafts"}
# the JSON keys an entry of each kind always holds (``document.parse_slot``, ``drafts._parse_draft``, ``_parse_image``)
_SLOT_KEYS = frozenset({"t", "d", "u", "c"})
_DRAFT_KEYS = frozenset({"f", "d", "k", "o", "b", "dv", "u"})
_IMAGE_KEYS = frozenset({"f", "d", "n", "a", "t"})


def layout_of(strategy: str) -> Layout:
    """The document layout ``strategy`` writes."""
    return LAYOUTS[strategy]


def layout_strategies(layout: Layout) -> list[str]:
    """The strategies that write (and read) ``layout``."""
    return [s for s, lay in LAYOUTS.items() if lay == layout]


def layout_text(layout: Layout) -> str:
    """What a layout's records are made of, for messages: ``per-field slots``, ``drafts``."""
    return _WHAT[layout]


def strategies_text(layout: Layout) -> str:
    """``'crdt' or 'lww-field' (per-field slots)``: the strategies of a layout, for messages."""
    return " or ".join(map(repr, layout_strategies(layout))) + f" ({layout_text(layout)})"


def _json_keys(raw: Any) -> frozenset[str] | None:
    if not isinstance(raw, str):
        return None
    try:
        p = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return frozenset(p) if isinstance(p, dict) else None


def entry_layout(key: str, raw: Any) -> Layout | None:
    """The layout whose entry ``key -> raw`` (of the ``f`` map) is: its key has that layout's form and its
    JSON holds that layout's keys. None: neither's (malformed). Field names never start with ``@``, so a
    draft or image key is never a slot's."""
    if key == IMAGE:
        keys = _json_keys(raw)
        return "drafts" if keys is not None and keys >= _IMAGE_KEYS else None
    parts = key.split(SEP)
    if parts[0] == DRAFT:
        keys = _json_keys(raw)
        return "drafts" if len(parts) == 3 and keys is not None and keys >= _DRAFT_KEYS else None
    if len(parts) == 2 and parts[0] and parts[1]:
        keys = _json_keys(raw)
        return "slots" if keys is not None and keys >= _SLOT_KEYS else None
    return None


def first_layout(entries: Mapping[str, Any]) -> Layout | None:
    """The layout a document whose ``f`` map holds ``entries`` was first written in (a store's own documents,
    checked when they were stored): that of its earliest draft or slot, by time, so that a record an earlier
    crdtsync let both layouts write is judged by the strategy that created it. None for an empty map."""
    best: tuple[int, Layout] | None = None
    for key, raw in entries.items():
        layout: Layout = "drafts" if key == IMAGE or key.startswith(DRAFT + SEP) else "slots"
        try:
            t = int(key.split(SEP)[2], 16) if layout == "drafts" else int(orjson.loads(raw)["t"])
        except (ValueError, IndexError, KeyError, TypeError):  # (the image: no time of its own writer)
            t = MAX_TIME
        if best is None or t < best[0]:
            best = (t, layout)
    return None if best is None else best[1]


def foreign_entry(strategy: str, key: str, raw: Any) -> str | None:
    """Why ``key -> raw`` cannot be read under ``strategy`` when it is an entry of the other layout (None
    when it is not: a malformed entry of neither): ``a draft of 'lww-record' or 'lww-patch' (drafts), written
    under another strategy (document layout) than 'crdt' (per-field slots)``."""
    layout = entry_layout(key, raw)
    if layout is None or layout == layout_of(strategy):
        return None
    what = "the server's copy" if key == IMAGE else "a draft" if layout == "drafts" else "a slot"
    return (f"{what} {key!r} of {strategies_text(layout)}: {OTHER_LAYOUT} "
            f"than {strategy!r} ({layout_text(layout_of(strategy))})")


def record_mismatch(collection: str, record: str, strategy: str, entries: Iterable[tuple[str, Any]]
                    ) -> StrategyMismatch | None:
    """The error for a record whose ``f`` map (``entries``) holds an entry of the other layout than
    ``strategy``'s, which cannot read it; None when none is. Only a store switched between layouts by a
    crdtsync from before ``Replica.open`` checked it holds such a record: merges refuse them."""
    for key, raw in entries:
        why = foreign_entry(strategy, key, raw)
        if why is not None:
            held = layout_strategies(entry_layout(key, raw) or "slots")
            return StrategyMismatch(
                collection, record, " or ".join(held), strategy,
                f"{collection}/{record} holds {why}, which cannot read or change it (a store opened under "
                "strategies of both layouts by an earlier crdtsync): nothing was written. discard_record() drops "
                "this device's pending changes of the record, which may be where it came from; else open the "
                f"store under {strategies_text(layout_of(held[0]))}")
    return None
