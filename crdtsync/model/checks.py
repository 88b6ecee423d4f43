"""Checking every slot and set entry of a record at once (a record new here, as a merge brings it). No I/O.

``RecordDoc._check_slot`` and ``_check_set`` check one entry and say exactly what is wrong with a bad one.
Here the usual entry is accepted inline instead, without their two calls per entry (half of the cost of
checking a slot); an entry the quick test does not pass, at the least doubt, goes through them, so what
is accepted and how a bad entry is refused (``RemoteValidationError``) stay theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ..schema import Collection, Invalid
from .slots import DELETED, SEP, Slot
from .state import SetEntry

__all__ = ["check_set_entries", "check_slots"]

_new = object.__new__
_PUT_FIELD, _PUT_ELEMENT, _PUT_WRITER, _PUT_ADDS, _PUT_REMOVED = (
    SetEntry.__dict__[n].__set__ for n in ("field", "element", "writer", "adds", "removed"))


def _set_entry(name: str, element: str, writer: str, adds: int, removed: dict[str, int]) -> SetEntry:
    """``SetEntry(...)`` made through its slots (its frozen ``__init__`` was a fifth of checking one)."""
    e = _new(SetEntry)
    _PUT_FIELD(e, name)
    _PUT_ELEMENT(e, element)
    _PUT_WRITER(e, writer)
    _PUT_ADDS(e, adds)
    _PUT_REMOVED(e, removed)
    return e


def check_slots(coll: Collection, slots: Mapping[str, Any], check_slot: Callable[[str, Any], Slot]
                ) -> dict[str, Slot]:
    """``check_slot`` (``RecordDoc._check_slot``) of every slot, the usual one accepted inline."""
    fields = coll.fields
    loads = orjson.loads
    out: dict[str, Slot] = {}
    for key, raw in slots.items():
        name, _, writer = key.partition(SEP)
        if writer and raw.__class__ is str:
            try:
                p = loads(raw)
                t, d, u, c = p["t"], p["d"], p["u"], p["c"]
                v = p.get("v")
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                out[key] = check_slot(key, raw)
                continue
            if t.__class__ is int and t > 0 and d.__class__ is str and u.__class__ is str and c.__class__ is dict:
                for x in c.values():
                    if x.__class__ is not int:
                        break
                else:
                    f = fields.get(name)
                    try:
                        if f is None:
                            ok = name == DELETED and v.__class__ is bool
                        elif f.merge == "register":
                            f.decode(v)
                            ok = True
                        elif f.merge == "counter":
                            f.check(v)
                            ok = True
                        else:
                            ok = v is None
                    except Invalid:
                        ok = False
                    if ok:
                        out[key] = Slot(name, writer, v, t, d, u, c)
                        continue
        out[key] = check_slot(key, raw)
    return out


def check_set_entries(coll: Collection, sets: Mapping[str, Any], check_set: Callable[[str, Any], SetEntry]
                      ) -> dict[str, SetEntry]:
    """``check_set`` (``RecordDoc._check_set``) of every set entry, the usual one accepted inline."""
    fields = coll.fields
    loads = orjson.loads
    out: dict[str, SetEntry] = {}
    for key, raw in sets.items():
        parts = key.split(SEP)
        if len(parts) == 3 and raw.__class__ is str:
            name, element, writer = parts
            f = fields.get(name)
            try:
                p = loads(raw)
                a, r = p["a"], p["r"]
                if f is not None and f.merge == "set" and a.__class__ is int and a >= 0 and r.__class__ is dict:
                    for x in r.values():
                        if x.__class__ is not int:
                            break
                    else:
                        f.of.decode(loads(element))  # type: ignore[attr-defined]
                        out[key] = _set_entry(name, element, writer, a, r)
                        continue
            except (Invalid, ValueError, KeyError, TypeError):  # (orjson's errors are ValueErrors)
                pass
        out[key] = check_set(key, raw)
    return out
