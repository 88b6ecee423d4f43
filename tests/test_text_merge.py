"""Concurrent writes of one ``Text`` field: a rewrite is one edit, so two concurrent rewrites both stay whole
(they merged into a character mix neither user wrote: "ustomer declined, close deMeetingooedfr..."),
while edits of different words of one sentence still merge character by character."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text

from crdtsync import Collection, Replica, Schema, Str
from crdtsync import Text as TextField
from crdtsync.model import text_edits

SCHEMA = Schema(Collection("accounts", {"name": Str(), "notes": TextField()}))


def _concurrent(old: str, alice: str, bob: str) -> tuple[str, str]:
    """Both devices' note after each wrote its text over ``old`` offline and they exchanged updates."""
    a = Replica.open(":memory:", SCHEMA, device="phone-a", user="alice")
    b = Replica.open(":memory:", SCHEMA, device="phone-b", user="bob")
    rid = a.create("accounts", {"name": "Acme", "notes": old})
    b.import_updates(a.export_updates())
    a.update("accounts", rid, {"notes": alice})
    b.update("accounts", rid, {"notes": bob})
    a.import_updates(b.export_updates())
    b.import_updates(a.export_updates())
    ra, rb = a.get("accounts", rid), b.get("accounts", rid)
    assert ra is not None and rb is not None and ra.conflicts == ()
    return ra.fields["notes"], rb.fields["notes"]


def test_two_concurrent_rewrites_keep_both_texts_whole() -> None:
    alice, bob = "Meeting booked for Tuesday 10:00", "Customer declined, close deal"
    on_a, on_b = _concurrent("Call back on Monday", alice, bob)
    assert on_a == on_b
    assert on_a in (alice + bob, bob + alice)


def test_concurrent_edits_of_different_words_both_survive() -> None:
    """The rewrite rule does not swallow real edits: each keeps the text around it, so both merge."""
    old = "Meet Bob at 10 on Monday in the Berlin office"
    alice = "Meet Bob at 11 on Monday in the Berlin office"
    bob = "Meet Bob at 10 on Tuesday in the Berlin office"
    carol = "Meet Bob at 10 on Monday in the Munich office"
    assert _concurrent(old, alice, bob) == ("Meet Bob at 11 on Tuesday in the Berlin office",) * 2
    assert _concurrent(old, bob, carol) == ("Meet Bob at 10 on Tuesday in the Munich office",) * 2
    assert _concurrent("Teh cat sat on teh mat", "The cat sat on teh mat", "Teh cat sat on the mat") == (
        "The cat sat on the mat",) * 2


def test_a_rewrite_is_one_edit_and_a_fix_stays_small() -> None:
    assert text_edits("Call back on Monday", "Customer declined, close deal") == [
        (0, 19, "Customer declined, close deal")]
    assert text_edits("Call back on Monday", "Meeting booked for Tuesday 10:00") == [
        (0, 19, "Meeting booked for Tuesday 10:00")]
    assert text_edits("Meet at 10 on Monday", "Meet at 11 on Tuesday") == [(14, 20, "Tuesday"), (9, 10, "1")]
    assert text_edits("Meet at 10 on Monday!", "Meet at 11 on Tuesday!") == [(14, 17, "Tues"), (9, 10, "1")]
    assert text_edits("hello world", "hello brave world") == [(6, 6, "brave ")]
    assert text_edits("Call me", "Call me back when you can") == [(7, 7, " back when you can")]  # still appended


def _kept(old: str, edits: list[tuple[int, int, str]]) -> list[tuple[int, tuple[int, int, str] | None,
                                                                     tuple[int, int, str] | None]]:
    """Each stretch of old text an edit list keeps, as (length, the edit before it, the edit after it)."""
    first = sorted(edits)
    out = []
    for before, after in zip([None, *first], [*first, None], strict=True):
        start = before[1] if before is not None else 0
        end = after[0] if after is not None else len(old)
        out.append((end - start, before, after))
    return out


def _weight(edit: tuple[int, int, str]) -> int:
    return max(edit[1] - edit[0], len(edit[2]))


WORDS = st.sampled_from(["call", "back", "on", "monday", "meeting", "booked", "for", "tuesday", "customer",
                         "declined", "close", "deal", "the", "at", "10:00", "a", "demo", "next", "week", "bob"])
SENTENCE = st.lists(WORDS, min_size=1, max_size=12).map(" ".join)


@st.composite
def _edit_of(draw: st.DrawFn, old: str) -> str:
    """A user's new text for ``old``: a rewrite, or a few words replaced, inserted or removed."""
    if draw(st.booleans()):
        return draw(SENTENCE)
    words = old.split(" ")
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(words)))
        kind = draw(st.sampled_from(["replace", "insert", "remove"]))
        if kind == "insert" or at == len(words):
            words.insert(at, draw(WORDS))
        elif kind == "replace":
            words[at] = draw(WORDS)
        elif len(words) > 1:
            del words[at]
    return " ".join(words)


def _apply(text: Text, edits: list[tuple[int, int, str]]) -> None:
    for start, end, insert in edits:  # last first; ASCII only here, so characters are bytes
        if end > start:
            del text[start:end]
        if insert:
            text.insert(start, insert)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.data())
def test_two_concurrent_edits_merge_with_each_users_runs_whole(data: st.DataObject) -> None:
    """For two concurrent writes over one text: each user's inserted runs appear contiguous in the merge
    (on both devices, which agree), and every stretch of old text a user's edits keep outweighs an edit
    beside it, so what a concurrent rewrite deletes of it is never a scattering of letters in the middle of
    the user's text. At either end of the text, a kept stretch is longer than the deletion or the insertion
    beside it. The old character diff kept single letters between its edits."""
    old = data.draw(SENTENCE, "old")
    news = [data.draw(_edit_of(old), "alice"), data.draw(_edit_of(old), "bob")]
    base = Doc(client_id=1)
    base.get("t", type=Text).insert(0, old)
    docs = []
    edits = []
    for i, new in enumerate(news):
        e = text_edits(old, new)
        edits.append(e)
        for length, before, after in _kept(old, e):
            if length and before is not None and after is not None:
                assert length > min(_weight(before), _weight(after)), (old, new, e)
            elif length and (before or after) is not None:
                edge = before or after
                assert edge is not None and length > min(edge[1] - edge[0], len(edge[2])), (old, new, e)
        doc = Doc(client_id=10 + i)
        doc.apply_update(base.get_update())
        _apply(doc.get("t", type=Text), e)
        assert str(doc.get("t", type=Text)) == new
        docs.append(doc)
    for d, other in itertools.permutations(docs):
        d.apply_update(other.get_update())
    merged = str(docs[0].get("t", type=Text))
    assert merged == str(docs[1].get("t", type=Text))
    for e in edits:
        for _, _, insert in e:
            assert insert in merged
