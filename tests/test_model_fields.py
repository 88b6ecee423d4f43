"""Each field kind through a real replica, alone and under concurrent writes from two or three devices."""

from __future__ import annotations

import datetime as dt
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync import Bool, Collection, Counter, Date, DateTime, Float, Int, Ref, Replica, Schema, Set, Str, Text
from crdtsync.model import text_edits
from crdtsync.testing import Cluster

SCHEMA = Schema(
    Collection("items", {
        "name": Str(), "qty": Int(), "price": Float(), "nan": Float(allow_nan=True), "done": Bool(),
        "due": Date(), "at": DateTime(), "notes": Text(), "visits": Counter(), "tags": Set(Str()),
        "nums": Set(Int()), "parent": Ref("items"), "owner": Ref("people"),
    }),
    Collection("people", {"name": Str()}),
)


def sync(*rs: Replica) -> None:
    """Every replica imports every other's export, twice around so all have everything."""
    for _ in range(2):
        for a in rs:
            for b in rs:
                if a is not b:
                    b.import_updates(a.export_updates())


@pytest.fixture
def trio() -> list[Replica]:
    return Cluster(SCHEMA, 3).replicas


def roundtrip(r: Replica, values: dict[str, object]) -> dict[str, object]:
    """Write on r, read back on a fresh replica that imported the export."""
    rid = r.create("items", values)
    other = Cluster(SCHEMA, 1).replicas[0]
    other.import_updates(r.export_updates())
    rec = other.get("items", rid)
    assert rec is not None
    return rec.fields


@pytest.mark.parametrize("value", [0, 5, -1, 2**63 - 1, -(2**63), 2**53 + 1])
def test_int_stays_int_through_a_merge(trio: list[Replica], value: int) -> None:
    got = roundtrip(trio[0], {"qty": value})["qty"]
    assert got == value and type(got) is int


def test_float_bool_none_date_datetime_str(trio: list[Replica]) -> None:
    at = dt.datetime(2026, 11, 23, 9, 30, 1, 123456, tzinfo=dt.UTC)
    fields = roundtrip(trio[0], {"name": "Zoë 😀", "price": 1.5, "done": True, "due": dt.date(2026, 1, 31),
                                 "at": at, "parent": None, "nan": math.nan})
    assert fields["name"] == "Zoë 😀"
    assert fields["price"] == 1.5 and type(fields["price"]) is float
    assert fields["done"] is True
    assert fields["due"] == dt.date(2026, 1, 31) and not isinstance(fields["due"], dt.datetime)
    assert fields["at"] == at and fields["at"].tzinfo is not None
    assert fields["parent"] is None and fields["qty"] is None
    assert math.isnan(fields["nan"])
    naive = roundtrip(trio[0], {"at": dt.datetime(2026, 1, 1, 12)})["at"]
    assert naive == dt.datetime(2026, 1, 1, 12) and naive.tzinfo is None


def test_float_accepts_int_and_returns_float(trio: list[Replica]) -> None:
    got = roundtrip(trio[0], {"price": 3})["price"]
    assert got == 3.0 and type(got) is float


def test_clearing_a_field_with_none(trio: list[Replica]) -> None:
    a = trio[0]
    rid = a.create("items", {"name": "x", "qty": 3})
    a.update("items", rid, {"qty": None})
    rec = a.get("items", rid)
    assert rec is not None and rec.fields["qty"] is None


def test_text_merges_by_character_with_non_ascii(trio: list[Replica]) -> None:
    a, b, c = trio
    rid = a.create("items", {"notes": "Café 😀 met the buyer."})
    sync(a, b, c)
    a.update("items", rid, {"notes": "Café 😀😀 met the buyer. Wants a demo."})
    b.update("items", rid, {"notes": "Le café 😀 met the buyer."})
    c.update("items", rid, {"notes": "Café 😀 met the new buyer."})
    for r in trio:  # each device reads its own write at once
        rec = r.get("items", rid)
        assert rec is not None and rec.conflicts == ()
    sync(a, b, c)
    got = {r.get("items", rid).fields["notes"] for r in trio}  # type: ignore[union-attr]
    assert got == {"Le café 😀😀 met the new buyer. Wants a demo."}


def test_text_edits_are_small_diffs() -> None:
    assert text_edits("hello world", "hello brave world") == [(6, 6, "brave ")]
    assert text_edits("same", "same") == []
    big = "x" * 15_000
    assert text_edits(big, big + "!") == [(15_000, 15_000, "!")]


def _applied(old: str, edits: list[tuple[int, int, str]]) -> str:
    for start, end, insert in edits:  # last first: each leaves the earlier offsets valid
        old = old[:start] + insert + old[end:]
    return old


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.text(alphabet="ab \n|é😀", max_size=700), st.lists(st.tuples(st.integers(0, 700), st.integers(0, 3),
                                                                       st.sampled_from("ab \n|é😀")), max_size=25))
def test_text_edits_turn_old_into_new_last_first(old: str, changes: list[tuple[int, int, str]]) -> None:
    new = list(old)
    for at, kind, ch in changes:
        at = min(at, len(new))
        if kind == 0 or not new:
            new.insert(at, ch)
        elif kind == 1:
            del new[min(at, len(new) - 1)]
        else:
            new[min(at, len(new) - 1)] = ch
    edits = text_edits(old, "".join(new))
    assert _applied(old, edits) == "".join(new)
    assert all(later[1] <= earlier[0] for earlier, later in itertools.pairwise(edits))


def test_a_long_repetitive_text_is_diffed_line_by_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """One word changed on each of 300 identical lines: one edit per line, and no character diff over more
    than a few hundred characters (difflib over the characters of the whole text took 26 s for this, its
    time growing with the cube of the length)."""
    import difflib

    sizes: list[int] = []
    real = difflib.SequenceMatcher

    class Counting(real):  # type: ignore[misc,valid-type]
        def __init__(self, isjunk: object, a: object, b: object, autojunk: bool = True) -> None:
            if isinstance(a, str) and isinstance(b, str):
                sizes.append(len(a) + len(b))
            super().__init__(isjunk, a, b, autojunk)  # type: ignore[arg-type]

    monkeypatch.setattr(difflib, "SequenceMatcher", Counting)
    old = "\n".join(["| col | col |"] * 300)
    new = "\n".join(["| col | val |"] * 300)
    edits = text_edits(old, new)
    assert len(edits) == 300 and _applied(old, edits) == new
    assert sizes and max(sizes) <= 500


def test_counter_concurrent_increments_add_up(trio: list[Replica]) -> None:
    a, b, c = trio
    rid = a.create("items", {"visits": 10})
    sync(a, b, c)
    a.increment("items", rid, "visits", 2)
    b.increment("items", rid, "visits", 5)
    c.increment("items", rid, "visits", -1)
    c.update("items", rid, {"visits": 20})  # a set is an increment by the difference seen locally (+11)
    sync(a, b, c)
    for r in trio:
        rec = r.get("items", rid)
        assert rec is not None and rec.fields["visits"] == 10 + 2 + 5 - 1 + 11 and rec.conflicts == ()


def test_counter_stays_in_64_bits(trio: list[Replica]) -> None:
    from crdtsync import ValidationError

    a = trio[0]
    rid = a.create("items", {"visits": 2**63 - 2})
    a.increment("items", rid, "visits", 1)
    with pytest.raises(ValidationError, match="64 bits"):
        a.increment("items", rid, "visits", 1)
    rec = a.get("items", rid)
    assert rec is not None and rec.fields["visits"] == 2**63 - 1


def test_concurrent_increments_beyond_64_bits_merge_clamped(trio: list[Replica]) -> None:
    """Each increment fits; merged directly, their sum does not (the relay refuses the change that makes
    one): it shows clamped to 64 bits. The sum made every import of the record raise TypeError (from the
    row's JSON), and the rest of the export with it."""
    a, b, c = trio
    low = a.create("items", {"visits": 0})
    high = a.create("items", {"visits": 0})
    sync(a, b, c)
    a.increment("items", low, "visits", -(2**63))
    b.increment("items", low, "visits", -1)
    a.increment("items", high, "visits", 2**63 - 1)
    b.increment("items", high, "visits", 2**63 - 1)
    c.increment("items", high, "visits", 2)
    other = b.create("items", {"name": "made on b"})
    sync(a, b, c)
    for r in trio:
        got = [r.get("items", rid) for rid in (low, high, other)]
        assert [x.fields["visits"] if x else None for x in got] == [-(2**63), 2**63 - 1, 0]
    reopened = Cluster(SCHEMA, 1).replicas[0]
    reopened.import_updates(a.export_updates())
    assert (rec := reopened.get("items", high)) is not None and rec.fields["visits"] == 2**63 - 1


def test_an_increment_whose_own_share_leaves_64_bits_is_refused_and_stores_nothing(trio: list[Replica]) -> None:
    """A counter slot holds its device's running total: after +M here and -M elsewhere, the sum is 0 but a
    further +M here would make this device's share 2M, which no peer can read (the relay refused it with a
    number the user never saw, and the record was blocked). It is refused at once, and nothing is stored."""
    from crdtsync import ValidationError

    a, b, _ = trio
    m = 2**63 - 1
    rid = a.create("items", {"visits": 0})
    sync(a, b)
    a.increment("items", rid, "visits", m)
    b.increment("items", rid, "visits", -m)
    sync(a, b)
    before = a.pending()
    with pytest.raises(ValidationError, match="this device's share of the counter"):
        a.increment("items", rid, "visits", m)
    with pytest.raises(ValidationError, match="this device's share of the counter"):
        a.update("items", rid, {"name": "x", "visits": m})  # nothing of it is written, the name neither
    assert a.pending() == before
    rec = a.get("items", rid)
    assert rec is not None and rec.fields["visits"] == 0 and rec.fields["name"] is None
    b.increment("items", rid, "visits", m)  # b's share is -M: +M fits
    sync(a, b)
    assert (rec := a.get("items", rid)) is not None and rec.fields["visits"] == m


def test_set_is_add_wins(trio: list[Replica]) -> None:
    a, b, c = trio
    rid = a.create("items", {"tags": {"lead", "north"}, "nums": {1, 2}})
    sync(a, b, c)
    a.update("items", rid, {"tags": set()})            # removes lead and north
    b.update("items", rid, {"tags": {"lead", "vip"}})  # removes north, adds vip
    c.update("items", rid, {"tags": {"lead", "north", "south"}, "nums": {2, 3}})
    sync(a, b, c)
    for r in trio:
        rec = r.get("items", rid)
        assert rec is not None
        assert rec.fields["tags"] == frozenset({"vip", "south"}), "removes of seen adds win; new adds stay"
        assert rec.fields["nums"] == frozenset({2, 3})
    # a concurrent add of an element beats its remove; keeping an element already there is no add
    a.update("items", rid, {"tags": {"vip", "south", "lead"}})
    b.update("items", rid, {"tags": {"south"}})
    sync(a, b, c)
    rec = c.get("items", rid)
    assert rec is not None and rec.fields["tags"] == frozenset({"south", "lead"})


def test_ref_to_a_record_created_offline_on_the_same_device(trio: list[Replica]) -> None:
    a, b, _ = trio
    parent = a.create("items", {"name": "parent"})
    person = a.create("people", {"name": "Dana"})
    child = a.create("items", {"name": "child", "parent": parent, "owner": person})
    b.import_updates(a.export_updates())
    rec = b.get("items", child)
    assert rec is not None and rec.fields["parent"] == parent and rec.fields["owner"] == person
    target = b.get("items", rec.fields["parent"])
    assert target is not None and target.fields["name"] == "parent"


def test_every_write_records_device_user_and_time(trio: list[Replica]) -> None:
    a, b, _ = trio
    rid = a.create("items", {"name": "x"})
    sync(a, b)
    b.update("items", rid, {"qty": 2, "tags": {"t"}})
    b.increment("items", rid, "visits", 3)
    sync(a, b)
    a.delete("items", rid)
    sync(a, b)
    hist = [(h.field, h.op, h.value, h.device, h.user) for h in b.history("items", rid)]
    assert hist == [("name", "create", "x", "d0", "u0"), ("qty", "set", 2, "d1", "u1"),
                    ("tags", "add", "t", "d1", "u1"), ("visits", "inc", 3, "d1", "u1"),
                    ("deleted", "delete", True, "d0", "u0")]
    times = [h.time for h in b.history("items", rid)]
    assert times == sorted(times) and all(h.at.year >= 2025 for h in b.history("items", rid))
    assert a.history("items", rid) == b.history("items", rid)


def test_concurrent_edits_inside_one_long_paragraph_both_survive(trio: list[Replica]) -> None:
    """A paragraph of about 300 characters on one line: one device changes a word at each end, another
    inserts words in the middle. Diffing long changed lines whole garbled the second edit ("The cheat
    graglient"); they are diffed word by word."""
    a, b, _ = trio
    words = "The client reported that the pump in the basement makes a loud noise every morning at about " \
            "six, and that the pressure gauge reads low after the noise stops; the technician should bring a " \
            "spare valve, a new gauge and the manual for the model installed in the spring, and call ahead."
    rid = a.create("items", {"notes": words + "\nSecond paragraph."})
    sync(a, b)
    a.update("items", rid, {"notes": words.replace("client", "customer").replace("call ahead", "phone ahead")
                            + "\nSecond paragraph."})
    b.update("items", rid, {"notes": words.replace("the pump in the basement", "the heat pump in the garage")
                            + "\nSecond paragraph."})
    sync(a, b)
    want = words.replace("client", "customer").replace("call ahead", "phone ahead") \
        .replace("the pump in the basement", "the heat pump in the garage") + "\nSecond paragraph."
    assert a.get("items", rid)["notes"] == b.get("items", rid)["notes"] == want  # type: ignore[index]


def test_writes_to_a_counter_summed_beyond_64_bits_agree_everywhere(trio: list[Replica]) -> None:
    """A sum beyond 64 bits shows clamped; a write to it is a difference from the real sum: setting the
    value made this device show it while every other replica, and its own export, showed the clamped
    sum. An increment that brings the sum back towards the range is taken, one taking it further is not."""
    from crdtsync import ValidationError

    a, b, c = trio
    m = 2**63 - 1
    rid = a.create("items", {"visits": 0})
    sync(a, b, c)
    a.increment("items", rid, "visits", m)
    b.increment("items", rid, "visits", m)
    sync(a, b, c)
    with pytest.raises(ValidationError, match="64 bits"):
        a.increment("items", rid, "visits", 1)
    a.increment("items", rid, "visits", -1)  # the sum is 2M-1: still shown M
    sync(a, b, c)
    assert {(r.get("items", rid) or pytest.fail()).fields["visits"] for r in trio} == {m}
    with pytest.raises(ValidationError, match="this device's share"):  # c's share is 0: -2M does not fit
        c.update("items", rid, {"visits": 5})
    a.update("items", rid, {"visits": 5})  # a's share is M-1: M-1 - (2M-1) + 5 fits
    assert (rec := a.get("items", rid)) is not None and rec.fields["visits"] == 5
    sync(a, b, c)
    fresh = Cluster(SCHEMA, 1).replicas[0]
    fresh.import_updates(a.export_updates())
    for r in (*trio, fresh):
        assert (rec := r.get("items", rid)) is not None and rec.fields["visits"] == 5
