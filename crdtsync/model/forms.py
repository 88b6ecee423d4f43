"""A form saved on what the user saw: the edits it makes, relative to the record it was filled from. No I/O.

An app shows a record in an edit form, the replica merges other devices' writes meanwhile, and the user
saves the form with every field it holds. Written as they are, those values would overwrite what arrived
since (the write counts as made after seeing it). ``form_edits`` turns them into the user's edits instead,
field by field, against ``shown`` (the fields of the record the form was filled from):

- a field whose value equals the one shown is left alone (the user did not change it);
- a register changed is written (the record model gives its slot the seen vector of what was shown, so a
  write made elsewhere since stays live, a surfaced conflict);
- a counter gets the difference between the form's value and the one shown, added to its sum now;
- a text gets the user's edits, replayed on the text as it is now (``textdiff.merge3``);
- a set gets the elements the user added and removed (``RecordDoc.write``'s ``set_edits``), and shows
  them applied to the set as it is now.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..schema import Collection, Field
from .record import RecordDoc
from .state import UNWRITTEN, encoded_or_stored
from .textdiff import merge3

__all__ = ["form_edits", "same_value"]


def _json(f: Field, value: Any) -> bytes:
    try:
        return orjson.dumps(encoded_or_stored(f, value))
    except TypeError:  # a value with no JSON form: never equal to a checked one
        return repr(value).encode()


def same_value(f: Field, a: Any, b: Any) -> bool:
    """Whether a field holds the same value in ``a`` and ``b``, compared as stored (``1``, ``1.0`` and
    ``True`` differ; a set by its elements' JSON forms)."""
    if f.merge == "set":
        of: Field = f.of  # type: ignore[attr-defined]
        try:
            return {_json(of, x) for x in a} == {_json(of, x) for x in b}
        except TypeError:  # not iterable: shown as stored
            return False
    if f.merge in ("text", "counter"):
        return bool(a.__class__ is b.__class__ and a == b)
    return _json(f, a) == _json(f, b)


def form_edits(coll: Collection, shown: Mapping[str, Any], values: Mapping[str, Any],
               doc: RecordDoc) -> tuple[dict[str, Any], dict[str, tuple[frozenset[Any], frozenset[Any]]]]:
    """The values to write for a form filled from ``shown`` and saved with ``values`` (checked), onto the
    record ``doc`` as it is now; and, for each set field changed, the elements added and removed.

    A counter's value is its sum now plus the user's difference, a text's the user's edits on the text now,
    a set's the user's additions and removals applied to the set now: what the record shows once written.
    """
    state = doc.state()
    out: dict[str, Any] = {}
    set_edits: dict[str, tuple[frozenset[Any], frozenset[Any]]] = {}
    for name, value in values.items():
        f = coll.fields[name]
        old = shown.get(name, UNWRITTEN[f.merge])
        if same_value(f, value, old):
            continue
        if f.merge == "register":
            out[name] = value
        elif f.merge == "counter":
            out[name] = doc.counter_sum(name) + value - (old if old.__class__ is int else 0)
        elif f.merge == "text":
            now = state.fields.get(name, "")
            out[name] = merge3(old if isinstance(old, str) else "", value,
                               now if isinstance(now, str) else "")
        else:
            before = frozenset(old) if isinstance(old, frozenset | set) else frozenset()
            added, removed = value - before, before - value
            now_set = state.fields.get(name, frozenset())
            now_set = now_set if isinstance(now_set, frozenset) else frozenset()
            out[name] = (now_set | added) - removed
            set_edits[name] = (added, removed)
    return out, set_edits
