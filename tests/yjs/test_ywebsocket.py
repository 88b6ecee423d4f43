"""The y-websocket wire format and room session, sans I/O: bytes in, outcomes out, no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Decoder, Doc, Map, Text, XmlElement, XmlFragment, XmlText, merge_updates, write_var_uint

from crdtsync.errors import RemoteProtocolError
from crdtsync.protocol.yroom import (
    CLOSE_MALFORMED,
    CLOSE_READ_ONLY,
    MAX_AWARENESS_CLIENTS,
    MAX_READ_ONLY_CHECKS,
    YRoom,
    YSession,
)
from crdtsync.protocol.yupdate import structure_error
from crdtsync.protocol.ywebsocket import (
    MAX_AWARENESS_ENTRIES,
    MAX_SAFE_INT,
    MAX_STATE_VECTOR_ENTRIES,
    MESSAGE_AWARENESS,
    SYNC_STEP1,
    SYNC_STEP2,
    SYNC_UPDATE,
    AwarenessEntry,
    AwarenessMessage,
    QueryAwareness,
    Reader,
    SyncMessage,
    awareness_message,
    decode_awareness,
    decode_state_vector,
    parse_message,
    permission_denied_message,
    query_awareness_message,
    state_vector_entries,
    sync_message,
    var_string,
    var_uint,
)
from crdtsync.relay.yjs import room_from_path
from tests.yjs.impossible import EDITS, IMPOSSIBLE


@settings(derandomize=True, max_examples=300)
@given(st.integers(min_value=0, max_value=MAX_SAFE_INT))
def test_var_uint_round_trips_and_matches_pycrdt(n: int) -> None:
    assert var_uint(n) == write_var_uint(n)
    r = Reader(var_uint(n))
    assert r.var_uint() == n and r.at_end()


@settings(derandomize=True, max_examples=200)
@given(st.text())
def test_var_string_counts_bytes_not_characters(s: str) -> None:
    data = var_string(s)
    r = Reader(data)
    assert r.var_string() == s and r.at_end()
    assert data.startswith(var_uint(len(s.encode("utf-8"))))


def test_var_string_non_ascii_is_what_lib0_writes() -> None:
    assert var_string("é✓") == bytes([5]) + "é✓".encode()
    # pycrdt's own decoder reads what we write
    assert Decoder(var_string("é✓ 🐍")).read_var_string() == "é✓ 🐍"


def test_var_uint_refuses_what_javascript_cannot_read() -> None:
    with pytest.raises(ValueError):
        var_uint(2**53)
    with pytest.raises(RemoteProtocolError, match="2\\*\\*53"):
        Reader(b"\xff" * 8 + b"\x7f").var_uint()


def test_parse_each_message_kind() -> None:
    assert parse_message(sync_message(SYNC_STEP1, b"\x00")) == SyncMessage(SYNC_STEP1, b"\x00")
    assert parse_message(sync_message(SYNC_UPDATE, b"\x00\x00")) == SyncMessage(SYNC_UPDATE, b"\x00\x00")
    e = AwarenessEntry(2**32 - 1, 7, '{"user":"é"}')
    assert parse_message(awareness_message([e])) == AwarenessMessage((e,))
    assert parse_message(query_awareness_message()) == QueryAwareness()


@pytest.mark.parametrize(("data", "match"), [
    (b"", "empty"),
    (b"\x80", "truncated"),
    (b"\x05", "unknown message kind 5"),
    (b"\x00\x03\x00", "unknown sync step 3"),
    (b"\x00\x00\x05\x00", "truncated"),
    (b"\x00\x00\x01\x00\x00", "trailing"),
    (b"\x03\x00", "trailing"),
    (permission_denied_message("no"), "server to client"),
    (awareness_message([AwarenessEntry(1, 1, "{nope")]), "not JSON"),
    (b"\x01\x05\x01\x01\x01\x01\xff", "UTF-8"),
    (b"\x01\x03\x7f\x01\x01", "claims 127 entries"),
])
def test_parse_refuses_garbage_with_a_reason(data: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        parse_message(data)


def test_state_vector_decoding() -> None:
    d: Doc[Any] = Doc(client_id=42)
    d.get("t", type=Text).insert(0, "abc")
    assert decode_state_vector(d.get_state()) == {42: 3}
    with pytest.raises(RemoteProtocolError):
        decode_state_vector(b"\x02\x01")


def _doc_with(text: str, client_id: int = 1) -> Doc[Any]:
    d: Doc[Any] = Doc(client_id=client_id)
    d.get("t", type=Text).insert(0, text)
    return d


def test_session_opens_with_step1_and_known_awareness() -> None:
    room = YRoom("r", _doc_with("hi").get_update())
    s = YSession(room, can_write=True)
    assert s.opening() == [sync_message(SYNC_STEP1, room.state_vector())]
    room.apply_awareness((AwarenessEntry(9, 1, '{"a":1}'),), set())
    frames = YSession(room, can_write=True).opening()
    assert frames[1] == awareness_message([AwarenessEntry(9, 1, '{"a":1}')])


def test_step1_is_answered_with_what_the_peer_lacks() -> None:
    room = YRoom("r", _doc_with("hello").get_update())
    peer: Doc[Any] = Doc()
    out = YSession(room, can_write=True).receive(sync_message(SYNC_STEP1, peer.get_state()))
    assert len(out.reply) == 1 and not out.updates and out.close is None
    msg = parse_message(out.reply[0])
    assert isinstance(msg, SyncMessage) and msg.step == SYNC_STEP2
    peer.apply_update(msg.payload)
    assert str(peer.get("t", type=Text)) == "hello"


def test_writer_updates_are_handed_out_for_storage_not_applied() -> None:
    room = YRoom("r")
    upd = _doc_with("new").get_update()
    out = YSession(room, can_write=True).receive(sync_message(SYNC_UPDATE, upd))
    assert out.updates == [upd] and out.close is None
    assert str(room.doc.get("t", type=Text)) == ""  # the shell applies it once it is durable
    assert room.apply(upd) is None
    assert str(room.doc.get("t", type=Text)) == "new"
    assert YSession(room, can_write=True).receive(sync_message(SYNC_STEP2, b"\x00\x00")).updates == []


def test_read_only_session_refuses_changes_but_not_what_the_room_has() -> None:
    w = _doc_with("hello world", client_id=5)
    del w.get("t", type=Text)[0:6]
    room = YRoom("r", w.get_update())
    ro = YSession(room, can_write=False)
    for harmless in (b"\x00\x00", w.get_update(), w.get_update(room.state_vector())):
        out = ro.receive(sync_message(SYNC_STEP2, harmless))
        assert out.close is None and not out.updates
    w.get("m", type=Map)["k"] = "v"
    out = ro.receive(sync_message(SYNC_UPDATE, w.get_update()))
    assert out.close is not None and out.close.code == CLOSE_READ_ONLY and not out.updates
    assert out.reply == [permission_denied_message(out.close.reason)]
    assert ro.receive(sync_message(SYNC_STEP1, b"\x00")) == type(out)()  # closed: nothing more
    # a deletion only, with no new items, is a change too
    d2: Doc[Any] = Doc()
    d2.apply_update(room.full_state())
    del d2.get("t", type=Text)[0:1]
    out = YSession(room, can_write=False).receive(sync_message(SYNC_UPDATE, d2.get_update()))
    assert out.close is not None and out.close.code == CLOSE_READ_ONLY
    assert "k" not in room.doc.get("m", type=Map)


def test_read_only_session_that_keeps_sending_harmless_updates_is_closed() -> None:
    w = _doc_with("abc")
    del w.get("t", type=Text)[0:1]
    room = YRoom("r", w.get_update())
    ro = YSession(room, can_write=False)
    for _ in range(MAX_READ_ONLY_CHECKS):
        assert ro.receive(sync_message(SYNC_STEP2, w.get_update())).close is None
    out = ro.receive(sync_message(SYNC_STEP2, w.get_update()))
    assert out.close is not None and out.close.code == CLOSE_READ_ONLY and "too many" in out.close.reason


def test_awareness_rules_follow_y_protocols() -> None:
    room = YRoom("r")
    mine: set[int] = set()
    s = YSession(room, can_write=False)  # read-only clients may still show presence
    s.controlled = mine
    out = s.receive(awareness_message([AwarenessEntry(3, 2, '{"n":1}')]))
    assert out.to_all == [awareness_message([AwarenessEntry(3, 2, '{"n":1}')])] and mine == {3}
    assert s.receive(awareness_message([AwarenessEntry(3, 1, '{"n":0}')])).to_all == []  # older clock
    assert s.receive(awareness_message([AwarenessEntry(3, 2, "null")])).to_all  # removal at same clock
    assert mine == set()
    s.receive(awareness_message([AwarenessEntry(3, 3, '{"n":2}')]))
    q = s.receive(query_awareness_message())
    assert q.reply == [awareness_message([AwarenessEntry(3, 3, '{"n":2}')])]
    assert s.leave() == [awareness_message([AwarenessEntry(3, 3, "null")])]
    assert room.awareness_states() == []


@settings(derandomize=True, max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=64),
    st.builds(lambda k, b: var_uint(k) + b, st.integers(0, 4), st.binary(max_size=40)),
    st.builds(lambda s, b: bytes([0, s]) + var_uint(len(b)) + b, st.integers(0, 3), st.binary(max_size=40)),
))
def test_garbage_never_raises_out_of_a_session(data: bytes) -> None:
    room = YRoom("r", _doc_with("keep").get_update())
    before = room.full_state()
    for can_write in (True, False):
        s = YSession(room, can_write=can_write)
        out = s.receive(data)
        if out.close is not None:
            assert out.close.code in (CLOSE_MALFORMED, CLOSE_READ_ONLY) and out.close.reason
            assert not out.updates and out.error is not None
    assert room.full_state() == before


def test_update_claiming_huge_counts_is_refused_before_yrs_sees_it() -> None:
    room = YRoom("r")
    out = YSession(room, can_write=True).receive(sync_message(SYNC_UPDATE, b"\xff\xff\xff\x7f"))
    assert out.close is not None and "claims 268435455 clients" in out.close.reason


def test_awareness_message_layout_is_lib0s() -> None:
    data = awareness_message([AwarenessEntry(1, 2, '"é"')])
    assert data == bytes([MESSAGE_AWARENESS, 8, 1, 1, 2, 4]) + '"é"'.encode()
    assert decode_awareness(data[2:]) == (AwarenessEntry(1, 2, '"é"'),)


@pytest.mark.parametrize(("path", "room"), [
    ("/yjs/notes?token=a%20b", "notes"),
    ("/yjs/caf%C3%A9/%C3%BC%201", "café/ü 1"),
    ("/yjs/a%3Fb%23c%25?token=x", "a?b#c%"),
    ("/yjs/", None),
    ("/yjs", None),
    ("/sync/notes", None),
])
def test_room_from_path_matches_how_websocketprovider_builds_urls(path: str, room: str | None) -> None:
    assert room_from_path(path) == room


def _three_updates() -> tuple[bytes, bytes, bytes]:
    """A text's "hello", then " world" (incremental: its structs start at clock 5), then a deletion."""
    writer: Doc = Doc(client_id=7)
    text = writer.get("t", type=Text)
    out = []
    for edit in (lambda: text.insert(0, "hello"), lambda: text.insert(5, " world"), lambda: text.__delitem__(
            slice(0, 2))):
        before = writer.get_state()
        edit()
        out.append(writer.get_update(before))
    return out[0], out[1], out[2]


def test_is_news_tells_new_structs_and_deletions_from_repeats_without_copying_the_room() -> None:
    first, more, deletion = _three_updates()
    room = YRoom("r", first)
    copies: list[int] = []
    real_apply = Doc.apply_update

    def counting(self: Doc, update: bytes) -> None:  # the scratch copy is the costly path
        copies.append(1)
        real_apply(self, update)

    Doc.apply_update = counting  # type: ignore[method-assign]
    try:
        assert room.is_news(more) and not copies
        assert not room.is_news(first) and not copies
    finally:
        Doc.apply_update = real_apply  # type: ignore[method-assign]
    room.apply(more)
    assert not room.is_news(more)
    assert room.is_news(deletion)
    room.apply(deletion)
    assert not room.is_news(deletion)
    assert str(room.doc.get("t", type=Text)) == "llo world"


def test_a_stored_room_state_keeps_updates_that_wait_for_a_missing_one() -> None:
    first, second, _ = _three_updates()
    room = YRoom("r")
    assert room.apply(second) is None  # arrives first: Yrs keeps it pending
    assert str(room.doc.get("t", type=Text)) == ""
    reloaded = YRoom("r", room.full_state())  # what compaction stores, loaded again (a relay restart)
    assert reloaded.apply(first) is None
    assert str(reloaded.doc.get("t", type=Text)) == "hello world"
    assert reloaded.waiting == [] and reloaded.full_state() == reloaded.doc.get_update()


def _text_of(update: bytes, *more: bytes) -> str:
    doc: Doc[Any] = Doc()
    for u in (update, *more):
        doc.apply_update(u)
    return str(doc.get("t", type=Text))


def test_step2_leaves_out_what_the_room_holds_pending_and_the_transaction_that_lets_it_in_carries_it() -> None:
    """Step 2 merged in the updates the room holds pending, as Yjs's ``encodeStateAsUpdate`` does; one that Yjs
    cannot read (held since before the room refused such updates, in a stored room) then made every client
    that joined throw and show an empty document. A client that joined meanwhile gets what waited from the
    transaction that lets it in, which goes to every connection."""
    first, more, deletion = _three_updates()
    room = YRoom("r")
    room.apply(more)
    step2 = parse_message(YSession(room, can_write=True).receive(sync_message(SYNC_STEP1, b"\x00")).reply[0])
    assert isinstance(step2, SyncMessage) and step2.step == SYNC_STEP2
    assert step2.payload == room.doc.get_update() and room.waiting == [more]
    applied = room.integrate(first)
    assert applied.update is not None and _text_of(step2.payload, applied.update) == "hello world"
    lone_delete = YRoom("d")
    lone_delete.apply(deletion)  # a deletion of items the room lacks: Yrs keeps it pending too
    assert lone_delete.diff(b"\x00") == lone_delete.doc.get_update()
    poison = IMPOSSIBLE[0][2]
    held = YRoom("p", merge_updates(*EDITS[:3]))
    assert held.apply(poison) is None and held.waiting  # a stored room from before the check
    assert held.diff(b"\x00") == held.doc.get_update()
    reloaded = YRoom("p", held.full_state())
    assert reloaded.waiting and reloaded.diff(b"\x00") == reloaded.doc.get_update()


@pytest.mark.parametrize(("name", "prefix", "update", "what"), IMPOSSIBLE, ids=[c[0] for c in IMPOSSIBLE])
def test_an_update_no_yjs_client_writes_is_refused_before_anything_is_stored(name: str, prefix: int, update: bytes,
                                                                             what: str) -> None:
    """Yrs read each and held it pending for good, and every step 2 carried it: every Yjs client that joined
    threw in ``integrateStructs`` and showed an empty room, also after a restart (``tests/yjs/impossible.py``)."""
    room = YRoom("r")
    for u in EDITS[:prefix]:
        assert room.apply(u) is None
    before = room.full_state()
    for step in (SYNC_STEP2, SYNC_UPDATE):
        out = YSession(room, can_write=True).receive(sync_message(step, update))
        assert out.close is not None and out.close.code == CLOSE_MALFORMED, name
        assert what in out.close.reason and len(out.close.reason.encode()) <= 123
        assert not out.updates and room.full_state() == before
    out = YSession(room, can_write=False).receive(sync_message(SYNC_UPDATE, update))
    assert out.close is not None and out.close.code == CLOSE_READ_ONLY  # a change, as any other


def test_the_updates_yjs_and_pycrdt_write_pass_the_structure_check() -> None:
    for u in EDITS:
        YRoom.check_update(u)
        assert structure_error(u) is None


@settings(derandomize=True, max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["text", "emoji", "delete", "map", "nested", "array", "xml"]),
                          st.integers(0, 40), st.text(alphabet="abé✓ ", min_size=1, max_size=4)),
                min_size=1, max_size=25))
def test_updates_of_real_edits_are_never_taken_for_impossible(edits: list[tuple[str, int, str]]) -> None:
    """Edits of every kind, each update as sent and the whole document: origins, right origins and parents
    of the writer's own client all come before its items."""
    doc: Doc[Any] = Doc(client_id=3)
    text, root, arr = doc.get("t", type=Text), doc.get("m", type=Map), doc.get("a", type=Array)
    frag = doc.get("x", type=XmlFragment)
    updates: list[bytes] = []
    doc.observe(lambda e: updates.append(e.update))
    for kind, at, value in edits:
        if kind == "text" and str(text).isascii():  # (offsets count UTF-16 units once an emoji is in)
            text.insert(at % (len(text) + 1), value)
        elif kind == "emoji":  # two UTF-16 units: the clocks of the items after it count them
            text.insert(0, f"😀{value}")
        elif kind == "delete" and str(text)[:1].isascii() and len(text):
            del text[0:1]
        elif kind == "map":
            root[value] = {"n": at, "s": [value, at / 3]}
        elif kind == "nested":
            inner = root.get("inner")
            if not isinstance(inner, Map):
                root["inner"] = inner = Map({"k": Text(value)})
            inner[value] = at
            inner["k"].insert(0, value)
        elif kind == "array":
            arr.insert(at % (len(arr) + 1), Array([value, Map({"v": at})]))
        else:
            el = frag.children.insert(at % (len(frag.children) + 1), XmlElement("p", {"a": value}))
            el.children.append(XmlText(value))
    for u in (*updates, doc.get_update()):
        assert structure_error(u) is None, u.hex()


def test_a_stored_room_state_keeps_a_deletion_that_came_before_its_items() -> None:
    """Yrs's encoding leaves out its pending delete set: ``full_state`` after a lone deletion was empty, and
    the deletion was lost at the next compaction, unload or restart."""
    first, more, deletion = _three_updates()
    room = YRoom("r")
    assert room.apply(deletion) is None
    assert room.waiting == [deletion]
    reloaded = YRoom("r", room.full_state())
    reloaded.apply(more)
    assert len(reloaded.waiting) == 2  # ``more`` waits for ``first``, and so does the deletion (of "he")
    reloaded.apply(first)
    assert str(reloaded.doc.get("t", type=Text)) == "llo world"
    assert reloaded.waiting == [] and reloaded.full_state() == reloaded.doc.get_update()


def test_integrate_returns_what_the_document_took_in() -> None:
    first, more, _ = _three_updates()
    room = YRoom("r")
    assert room.integrate(more).update is None  # waits for ``first``: nothing integrated yet
    both = room.integrate(first).update
    assert both is not None and _text_of(both) == "hello world"  # ``first`` and the pending ``more``
    assert room.integrate(first).update is None  # a repeat changes nothing
    assert room.integrate(b"\x00\x01\x05").error is not None


def test_a_reader_sending_back_what_the_room_holds_waiting_is_not_refused() -> None:
    """A reader gets the room's waiting updates in step 2 and keeps them pending; reconnecting, its step 2 (or
    an update) carries them back. That is nothing the room lacks: it was closed with 4403 for good."""
    _, more, _ = _three_updates()
    room = YRoom("r", _doc_with("other", client_id=1).get_update())
    room.integrate(more)  # waits for ``first``
    for copy in (more, merge_updates(room.doc.get_update(), more)):
        ro = YSession(room, can_write=False)
        for step in (SYNC_STEP2, SYNC_UPDATE):
            out = ro.receive(sync_message(step, copy))
            assert out.close is None and not out.updates
    new = _doc_with("new", client_id=2).get_update()
    out = YSession(room, can_write=False).receive(sync_message(SYNC_STEP2, merge_updates(more, new)))
    assert out.close is not None and out.close.code == CLOSE_READ_ONLY  # with something new: refused


def test_a_reloaded_room_keeps_waiting_only_what_its_document_lacks() -> None:
    """The stored state is the document merged with the waiting updates; loading it kept all of it waiting,
    so every step 2 carried the whole document and every update cost a whole-document merge."""
    first, more, _ = _three_updates()
    room = YRoom("r", _doc_with("x" * 20_000, client_id=1).get_update())
    room.integrate(more)
    reloaded = YRoom("r", room.full_state())
    assert reloaded.waiting == room.waiting == [more]
    in_sync = reloaded.diff(reloaded.state_vector())
    assert len(in_sync) < 100 and _text_of(in_sync) == ""  # only ``more``, not the document
    assert reloaded.integrate(first).update is not None
    assert str(reloaded.doc.get("t", type=Text)).endswith("hello world") and reloaded.waiting == []


def test_a_waiting_update_sent_again_is_kept_once() -> None:
    """Each reconnecting writer's step 2 carries its copy of the room's waiting update: each was kept again
    (1,001 copies after 1,000 reconnects, and every later update cost more)."""
    first, more, _ = _three_updates()
    room = YRoom("r", _doc_with("other", client_id=1).get_update())
    room.integrate(more)
    for copy in (more, more, merge_updates(room.doc.get_update(), more), more):
        assert room.integrate(copy).update is None
    assert room.waiting == [more]
    assert room.integrate(first).update is not None and room.waiting == []
    assert str(room.doc.get("t", type=Text)) in ("hello worldother", "otherhello world")


def test_many_updates_arriving_in_reverse_are_taken_in_without_merging_all_that_waits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """300 updates of one client arrive newest first, then the first: each used to be checked against a
    merge of everything waiting (quadratic: 10.5 s for 2,000, and every room stalled meanwhile)."""
    from pycrdt import Doc, Text

    from crdtsync.protocol import yroom

    src: Doc[Any] = Doc()
    text = src.get("t", type=Text)
    updates: list[bytes] = []
    src.observe(lambda e: updates.append(e.update))
    for i in range(300):
        text.insert(len(str(text)), chr(97 + i % 26))
    merged_sizes: list[int] = []
    real = yroom.merge_updates

    def counting(*parts: bytes) -> bytes:
        merged_sizes.append(len(parts))
        return real(*parts)

    monkeypatch.setattr(yroom, "merge_updates", counting)
    room = yroom.YRoom("r")
    for u in reversed(updates[1:]):
        assert room.integrate(u).update is None  # waits
    assert room.integrate(updates[0]).unblocked
    assert str(room.doc.get("t", type=Text)) == str(text) and room.waiting == []
    assert max(merged_sizes, default=0) <= 33  # never a merge of all that waits


def _state_vector(n: int, first: int = 1_000_000_000) -> bytes:
    return var_uint(n) + b"".join(var_uint(first + c) + var_uint(1) for c in range(n))


def test_a_step1_naming_far_more_clients_than_the_room_has_is_refused_unread() -> None:
    """A read-only client's step 1 of a million entries (5.7 MiB, valid) took 1.2-1.6 s of the event loop to
    decode, message after message, stalling every room and device; it was answered."""
    room = YRoom("r", _doc_with("x", client_id=1).get_update())
    ok = YSession(room, can_write=False).receive(sync_message(SYNC_STEP1, _state_vector(MAX_STATE_VECTOR_ENTRIES)))
    assert ok.close is None and len(ok.reply) == 1  # as many clients as allowed beyond the room's one
    big = sync_message(SYNC_STEP1, _state_vector(MAX_STATE_VECTOR_ENTRIES + 2))
    out = YSession(room, can_write=False).receive(big)
    assert out.close is not None and out.close.code == CLOSE_MALFORMED
    assert f"state vector of {MAX_STATE_VECTOR_ENTRIES + 2} entries" in out.close.reason and not out.reply


@settings(derandomize=True, max_examples=400)
@given(st.lists(st.sampled_from([0, 1, 127, 128, 2**32, 2**49, 2**53 - 1, 2**53]), max_size=7),
       st.lists(st.tuples(st.integers(0, 40), st.sampled_from([0x00, 0x0F, 0x10, 0x7F, 0x80, 0x90, 0xFF])),
                max_size=3), st.integers(0, 3), st.integers(0, 12))
def test_the_quick_state_vector_check_agrees_with_decoding_it(values: list[int], edits: list[tuple[int, int]],
                                                               pairs: int, pad: int) -> None:
    """``state_vector_entries`` (bytes worked on in C) refuses exactly what ``decode_state_vector`` does."""
    raw = bytearray(var_uint(pairs))
    for v in values:
        raw += var_uint(min(v, MAX_SAFE_INT)) if v <= MAX_SAFE_INT else b"\xff" * 7 + b"\x10"
    raw += b"\x80" * pad + b"\x00" if pad else b""  # a padded varuint (lib0 reads it)
    for at, byte in edits:
        raw.insert(at % (len(raw) + 1), byte)
    sv = bytes(raw)
    try:
        decode_state_vector(sv)
        decoded = True
    except RemoteProtocolError:
        decoded = False
    try:
        state_vector_entries(sv, 10)
        checked = True
    except RemoteProtocolError:
        checked = False
    assert checked == decoded, sv.hex()


def test_an_awareness_message_of_too_many_entries_is_refused_before_it_is_read() -> None:
    """One of 500,000 entries held the event loop 2.2-3 s; every client of the room then held 500,001
    presence entries, and each joiner cost 0.65-1.3 s while that connection stayed."""
    room = YRoom("r")
    s = YSession(room, can_write=False)
    over = awareness_message([AwarenessEntry(i + 1, 1, "{}") for i in range(MAX_AWARENESS_ENTRIES + 1)])
    out = s.receive(over)
    assert out.close is not None and out.close.code == CLOSE_MALFORMED and "entries" in out.close.reason
    assert room.awareness == {} and not out.to_all


def test_one_connection_publishes_the_states_of_a_few_clients_at_most() -> None:
    room = YRoom("r")
    others = YSession(room, can_write=True)
    everyone = [AwarenessEntry(1000 + i, 1, '{"u":1}') for i in range(3 * MAX_AWARENESS_CLIENTS)]
    for e in everyone:  # many clients, each on its own connection
        YSession(room, can_write=True).receive(awareness_message([e]))
    # a provider echoes what it got (the same clocks): nothing it takes over, however many
    assert others.receive(awareness_message(everyone)).close is None and others.controlled == set()
    mine = [AwarenessEntry(i + 1, 1, '{"me":1}') for i in range(MAX_AWARENESS_CLIENTS)]
    assert others.receive(awareness_message(mine)).close is None
    assert others.receive(awareness_message([AwarenessEntry(1, 2, '{"me":2}')])).close is None  # renewing
    out = others.receive(awareness_message([AwarenessEntry(99, 1, '{"one":"more"}')]))
    assert out.close is not None and out.close.code == CLOSE_MALFORMED and not out.to_all
    assert 99 not in room.awareness and len(room.awareness_states()) == 4 * MAX_AWARENESS_CLIENTS


def test_the_removal_of_a_state_the_room_never_held_is_not_kept() -> None:
    room = YRoom("r")
    s = YSession(room, can_write=False)
    out = s.receive(awareness_message([AwarenessEntry(i, 1, "null") for i in range(1, 1001)]))
    assert out.close is None and not out.to_all and room.awareness == {}


def test_a_connection_cannot_set_or_remove_the_presence_of_a_client_another_connection_publishes() -> None:
    """A read-only token sent alice's client id with a higher clock: bob saw "MALLORY-as-alice", and alice's
    own state was replaced. Echoes of others' states stay harmless, and alice reconnecting works."""
    room = YRoom("r")
    alice, bob, mallory = (YSession(room, can_write=w) for w in (True, True, False))
    mine = AwarenessEntry(1, 1, '{"user":"alice"}')
    assert alice.receive(awareness_message([mine])).to_all
    assert bob.receive(awareness_message([AwarenessEntry(2, 1, '{"user":"bob"}')])).to_all
    for forged in (AwarenessEntry(1, 10**6, '{"user":"MALLORY-as-alice"}'), AwarenessEntry(1, 10**6, "null"),
                   AwarenessEntry(1, 1, "null")):
        own = AwarenessEntry(3, 1, '{"user":"mallory"}')
        out = mallory.receive(awareness_message([forged, own]))
        assert out.close is None and room.awareness[1] == mine
        assert out.to_all in ([], [awareness_message([own])])  # its own state only, once
    assert bob.receive(awareness_message([mine, AwarenessEntry(2, 1, '{"user":"bob"}')])).to_all == []  # an echo
    assert alice.receive(awareness_message([AwarenessEntry(1, 2, '{"user":"alice","at":2}')])).to_all
    assert mallory.controlled == {3} and bob.controlled == {2} and alice.controlled == {1}
    assert alice.leave() == [awareness_message([AwarenessEntry(1, 2, "null")])]
    again = YSession(room, can_write=True)  # alice's reconnect: a new connection, the same client id
    assert again.receive(awareness_message([AwarenessEntry(1, 3, '{"user":"alice"}')])).to_all
    assert room.awareness[1].state == '{"user":"alice"}' and again.controlled == {1}
    assert mallory.receive(awareness_message([AwarenessEntry(1, 99, '{"user":"x"}')])).to_all == []


@settings(derandomize=True, max_examples=500)
@given(st.sampled_from([*EDITS, *(c[2] for c in IMPOSSIBLE)]),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255), st.booleans()), max_size=4))
def test_the_structure_check_gives_a_verdict_or_none_and_never_raises(update: bytes,
                                                                     edits: list[tuple[int, int, bool]]) -> None:
    raw = bytearray(update)
    for at, byte, insert in edits:
        if insert or not raw:
            raw.insert(at % (len(raw) + 1), byte)
        else:
            raw[at % len(raw)] = byte
    verdict = structure_error(bytes(raw))
    assert verdict is None or len(f"malformed message: {verdict}".encode()) <= 123  # a close reason's room


def test_the_longest_structure_verdict_fits_a_close_reason() -> None:
    def leb(n: int) -> bytes:
        out = bytearray()
        while n > 0x7F:
            out.append(0x80 | (n & 0x7F))
            n >>= 7
        return bytes(out + bytes([n]))

    client, clock = leb(2**64 - 1), leb(2**32 - 1)
    update = b"\x01\x01" + client + clock + b"\x44" + client + clock + b"\x01x\x00"
    verdict = structure_error(update)
    assert verdict is not None and "right origin" in verdict
    out = YSession(YRoom("r"), can_write=True).receive(sync_message(SYNC_UPDATE, update))
    assert out.close is not None and len(out.close.reason.encode()) <= 123, out.close


def test_updates_yrs_leaves_waiting_once_their_missing_one_came_are_offered_again() -> None:
    """A text's inserts U1..U3 and a map set U4 arriving as U4, U3, U2, then U1: Yrs took in U1 and left U2
    and U3 waiting for good; clients other than the writer never got "bc", nor anything built on it."""
    src: Doc[Any] = Doc(client_id=7)
    text, root = src.get("t", type=Text), src.get("m", type=Map)
    ups: list[bytes] = []
    src.observe(lambda e: ups.append(e.update))
    text.insert(0, "a")
    text.insert(1, "b")
    text.insert(2, "c")
    root["k"] = "v"
    room = YRoom("r")
    sent = [room.integrate(u) for u in reversed(ups)]
    assert str(room.doc.get("t", type=Text)) == "abc" and room.waiting == []
    assert sent[-1].unblocked  # so the transaction goes to the sender of U1 too
    online: Doc[Any] = Doc()
    for a in sent:
        if a.update is not None:
            online.apply_update(a.update)
    assert str(online.get("t", type=Text)) == "abc" and online.get("m", type=Map).to_py() == {"k": "v"}
