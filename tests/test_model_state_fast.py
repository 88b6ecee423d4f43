"""The shortcuts ``compute_state`` takes on a merge (see ``model/state.py``) give exactly what the long way
gives: values of the field types it takes as stored, and the states and candidates it builds by hand."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync.model.state import (
    _AS_STORED,
    Candidate,
    RecordState,
    _by,
    _decode_with,
    _record_state,
)
from crdtsync.schema import Bool, Field, Int, Ref, Str

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
    assert _decode_with(f, raw) is raw


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
