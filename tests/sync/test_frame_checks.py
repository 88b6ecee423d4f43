"""The inline checks of the hot frame entries (PUSH ``[change_id, collection, record]``, CHANGES and LIVE
``[collection, record, seq]``, ACK id lists) accept and refuse exactly what the generic checks do."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync.protocol.frames import FrameError, _entry, _ints, _triples

values = st.one_of(
    st.integers(min_value=-2, max_value=3), st.sampled_from([2**63 - 1, 2**63, -(2**63)]), st.booleans(),
    st.none(), st.floats(allow_nan=False), st.text(max_size=3), st.sampled_from(["x" * 200, "x" * 201, "é"]),
    st.lists(st.integers(), max_size=2),
)
edges = st.sampled_from([True, False, -1, 2**63, "", "x" * 201, "x" * 501, None, 1.0, "7", 7, [1]])
valid = {"i": st.integers(min_value=0, max_value=2**63 - 1), "n": st.text(min_size=1, max_size=5),
         "r": st.text(max_size=5)}


@st.composite
def near(draw: st.DrawFn, kinds: str) -> list[Any]:
    """A valid entry with at most one position replaced by an edge value: what the checks must tell apart."""
    entry = [draw(valid[k]) for k in kinds]
    at = draw(st.integers(-1, len(kinds) - 1))
    if at >= 0:
        entry[at] = draw(edges)
    return entry


def entries(kinds: str) -> st.SearchStrategy[Any]:
    return st.one_of(near(kinds), st.lists(values, min_size=0, max_size=4), values)


def outcome(f: Any, *args: Any) -> str | None:
    try:
        f(*args)
    except FrameError as e:
        return str(e)
    return None


def generic(kinds: str, v: list[Any]) -> str | None:
    def check() -> None:
        for t in v:
            _entry(kinds, t, "X.items")
    return outcome(check)


@settings(derandomize=True, max_examples=600, deadline=None)
@given(data=st.data(), kinds=st.sampled_from(["inn", "nni", "irr"]))
def test_inline_entry_checks_agree_with_the_generic_one(data: st.DataObject, kinds: str) -> None:
    v = data.draw(st.lists(entries(kinds), max_size=4))
    assert outcome(_triples(kinds), v, "X.items") == generic(kinds, v)


@settings(derandomize=True, max_examples=600, deadline=None)
@given(data=st.data(), kinds=st.sampled_from(["inn", "nni", "irr"]))
def test_entries_with_one_bad_position_are_refused_as_the_generic_check_does(data: st.DataObject,
                                                                             kinds: str) -> None:
    v = data.draw(st.lists(near(kinds), min_size=1, max_size=2))
    assert outcome(_triples(kinds), v, "X.items") == generic(kinds, v)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(v=st.lists(values, max_size=4))
def test_int_lists_refuse_what_int_refuses(v: list[Any]) -> None:
    ok = all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63 for x in v)
    assert (outcome(_ints, v, "ACK.ok") is None) == ok


def test_the_inline_checks_refuse_with_the_same_reasons() -> None:
    check = _triples("nni")
    assert outcome(check, [["a", "b", 1], ["a", "", 1]], "LIVE.items") == \
        "LIVE.items must be a str of 1 to 200 characters"
    assert outcome(check, [["a", "b", True]], "LIVE.items") == "LIVE.items must be an int in 0..2**63-1"
    assert outcome(_triples("inn"), [[1, "c"]], "PUSH.changes") == "PUSH.changes entries must be lists of 3"
