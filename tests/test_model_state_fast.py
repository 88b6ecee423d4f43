"""The shortcuts ``compute_state`` takes on a merge (see ``model/state.py``) give exactly what the long way
gives: values of the field types it takes as stored, the states and candidates it builds by hand, and whole
states, conflicts and all, against the function as it was before them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync.model.slots import DELETED, Slot, frontier, mutually_concurrent, winner
from crdtsync.model.state import (
    _AS_STORED,
    Candidate,
    Conflict,
    RecordState,
    SetEntry,
    _by,
    _cand,
    _edit_cand,
    _record_state,
    compute_state,
    decoded_or_stored,
)
from crdtsync.schema import Bool, Collection, Counter, Date, DateTime, Field, Float, Int, Ref, Set, Str, Text

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
    | st.text() | st.sampled_from(["\ud800", "x" * 300, ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6)

AS_STORED_FIELDS: list[Field] = [Str(), Str(max_length=3, min_length=1), Str(choices=("a", "b")),
                                 Str(pattern="[a-z]+", required=True), Int(), Int(min=0, max=9, choices=(1, 2)),
                                 Bool(), Ref("accounts"), Ref("accounts", required=True)]


def test_the_list_covers_exactly_the_types_taken_as_stored() -> None:
    assert {type(f) for f in AS_STORED_FIELDS} == set(_AS_STORED)


@pytest.mark.parametrize("f", AS_STORED_FIELDS, ids=repr)
@settings(derandomize=True, max_examples=80, deadline=None)
@given(raw=JSON)
def test_a_type_taken_as_stored_decodes_any_json_value_to_itself(f: Field, raw: Any) -> None:
    assert decoded_or_stored(f, raw) is raw


@settings(derandomize=True, max_examples=50, deadline=None)
@given(st.text(), st.text(), st.integers(0, 2**63))
def test_a_candidate_made_by_hand_is_the_candidate(device: str, user: str, t: int) -> None:
    made, real = _by(device, user, t), Candidate(None, device, user, t)
    assert type(made) is Candidate
    assert made == real and hash(made) == hash(real) and repr(made) == repr(real)
    assert made.at == real.at
    with pytest.raises(AttributeError):
        made.device = "other"  # type: ignore[misc]


def test_a_state_made_by_hand_is_the_state() -> None:
    args: tuple[Any, ...] = ("accounts", "a1", {"name": "x"}, True, (), {"w": 5}, True, 5,
                             {"name": Candidate(None, "d", "u", 5)})
    made, real = _record_state(*args), RecordState(*args)
    assert type(made) is RecordState
    assert made == real and repr(made) == repr(real)
    assert vars(made) == vars(real)
    with pytest.raises(AttributeError):
        made.deleted = False  # type: ignore[misc]


# -- compute_state against the long way --------------------------------------------------------------------

def _reference_state(coll: Collection, record_id: str, slots: list[Slot], sets: list[SetEntry],
                     texts: Mapping[str, str]) -> RecordState:
    """``compute_state`` as it was before its shortcuts (every value decoded, every field looked up, the
    delete rules always weighed): the oracle the fast one must agree with."""
    by_field: dict[str, list[Slot]] = defaultdict(list)
    vector: dict[str, int] = {}
    for s in slots:
        by_field[s.field].append(s)
        vector[s.writer] = max(vector.get(s.writer, 0), s.t)
    values: dict[str, Any] = {}
    changed_by: dict[str, Candidate] = {}
    conflicts: list[Conflict] = []
    live: dict[str, list[Slot]] = {}
    for name, f in coll.fields.items():
        fs = by_field.get(name, [])
        if not fs:
            values[name] = None if f.merge == "register" else 0 if f.merge == "counter" \
                else texts.get(name, "") if f.merge == "text" else frozenset()
            continue
        front = frontier(fs)
        live[name] = front
        latest = winner(fs)
        assert latest is not None
        changed_by[name] = Candidate(None, latest.device, latest.user, latest.t)
        if f.merge == "register":
            w = winner(front)  # (no frontier at all when the slots saw each other: a peer's odd clocks)
            values[name] = None if w is None else decoded_or_stored(f, w.value)
            # live values all equal (the same JSON value, of the same type) are no conflict
            if w is not None and any(type(s.value) is not type(w.value) or s.value != w.value for s in front):
                losers = sorted((s for s in front if s is not w), key=lambda s: s.order, reverse=True)
                conflicts.append(Conflict(coll.name, record_id, name, "concurrent-write",
                                          tuple(_cand(coll, s) for s in [w, *losers])))
        elif f.merge == "counter":
            values[name] = sum(int(s.value or 0) for s in fs)
        elif f.merge == "text":
            values[name] = texts.get(name, "")
        else:
            values[name] = frozenset()
    grouped: dict[tuple[str, str], list[SetEntry]] = defaultdict(list)
    for e in sets:
        grouped[(e.field, e.element)].append(e)
    members: dict[str, set[Any]] = defaultdict(set)
    for (name, element), es in grouped.items():
        removed: dict[str, int] = {}
        for e in es:
            for w, n in e.removed.items():
                removed[w] = max(removed.get(w, 0), n)
        if any(e.adds > removed.get(e.writer, 0) for e in es):
            of = getattr(coll.fields.get(name), "of", None)
            raw = orjson.loads(element)
            members[name].add(raw if of is None else decoded_or_stored(of, raw))
    values.update({n: frozenset(v) for n, v in members.items()})
    dels = frontier(by_field.get(DELETED, []))
    active = [d for d in dels if d.value is True]
    restores = [d for d in dels if d.value is not True]
    clashing = [(d, s) for d in active for front in live.values() for s in front if mutually_concurrent(d, s)]
    if coll.delete_policy == "delete-wins":
        deleted = bool(active)
        if deleted:
            d0 = winner(active)
            assert d0 is not None
            del_cand = Candidate(True, d0.device, d0.user, d0.t)
            edited: dict[str, list[Slot]] = defaultdict(list)
            for _, s in clashing:
                if s not in edited[s.field]:
                    edited[s.field].append(s)
            for r in restores:
                edited[DELETED].append(r)
            for name, ss in sorted(edited.items()):
                ss.sort(key=lambda s: s.order, reverse=True)
                conflicts.append(Conflict(coll.name, record_id, "deleted" if name == DELETED else name,
                                          "edit-vs-delete", (del_cand, *(_edit_cand(coll, s, values) for s in ss))))
    else:
        deleted = bool(active) and not clashing and not restores
        if active and not deleted:
            k0 = winner([s for _, s in clashing] + restores)
            assert k0 is not None
            cands = [Candidate(False, k0.device, k0.user, k0.t)]
            cands += [Candidate(True, d.device, d.user, d.t) for d in sorted(active, key=lambda d: d.order,
                                                                          reverse=True)]
            conflicts.append(Conflict(coll.name, record_id, "deleted", "delete-vs-edit", tuple(cands)))
    return RecordState(coll.name, record_id, values, deleted, tuple(conflicts), vector, bool(vector),
                       max(vector.values(), default=0), changed_by)


FIELDS: dict[str, Field] = {"name": Str(max_length=5), "n": Int(min=0), "ok": Bool(), "ref": Ref("x"),
                            "f": Float(), "day": Date(), "at": DateTime(), "notes": Text(), "visits": Counter(),
                            "tags": Set(Str()), "days": Set(Date())}
COLLS = [Collection("c", FIELDS, delete_policy="delete-wins"), Collection("c", FIELDS, delete_policy="edit-wins")]
WRITERS = ["a", "b", "c"]
VALUES = st.none() | st.booleans() | st.integers(-3, 9) | st.sampled_from(
    ["abc", "far too long", "2024-02-03", "2024-02-03T04:05:06", "not a date", 1.5])


@st.composite
def slot_sets(draw: st.DrawFn) -> tuple[list[Slot], list[SetEntry]]:
    """The slots and set entries of one record as several writers left them (values good or bad)."""
    slots: list[Slot] = []
    for name in draw(st.lists(st.sampled_from([*FIELDS, DELETED]), max_size=8, unique=True)):
        for w in draw(st.lists(st.sampled_from(WRITERS), min_size=1, unique=True)):
            # (a counter slot is never anything but an int or None: ``check`` refuses the rest)
            value = draw(st.booleans()) if name == DELETED else draw(st.none() | st.integers(-3, 9)) \
                if name == "visits" else draw(VALUES)
            seen = draw(st.dictionaries(st.sampled_from(WRITERS), st.integers(1, 6), max_size=3))
            slots.append(Slot(name, w, value, draw(st.integers(1, 6)), draw(st.sampled_from(["d1", "d2"])),
                              "u", seen))
    entries = [SetEntry(name, orjson.dumps(el).decode(), w, draw(st.integers(0, 3)),
                        draw(st.dictionaries(st.sampled_from(WRITERS), st.integers(0, 3), max_size=2)))
               for name, el, w in draw(st.lists(st.tuples(st.sampled_from(["tags", "days"]),
                                                          st.sampled_from(["x", "2024-01-01", "bad"]),
                                                          st.sampled_from(WRITERS)), max_size=5, unique=True))]
    return slots, entries


@settings(derandomize=True, max_examples=150, deadline=None)
@given(slot_sets(), st.sampled_from(COLLS), st.booleans())
def test_compute_state_agrees_with_the_long_way(content: tuple[list[Slot], list[SetEntry]], coll: Collection,
                                                with_text: bool) -> None:
    slots, entries = content
    texts = {"notes": "hello"} if with_text else {}
    fast, slow = compute_state(coll, "r1", slots, entries, texts), _reference_state(coll, "r1", slots, entries, texts)
    assert fast == slow
    assert repr(fast) == repr(slow)  # the same values, not only equal ones (True == 1)
