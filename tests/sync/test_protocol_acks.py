"""One ACK frame answering several pushes (a relay commits many pushes in one write group): the core splits
it into one ``Ack`` per push, and refuses a frame that does not say exactly what became of each change."""

from __future__ import annotations

import orjson
import pytest

from crdtsync.codec import write_bytes
from crdtsync.errors import LocalProtocolError
from crdtsync.protocol import (
    VERSION,
    Ack,
    Acks,
    Bye,
    Change,
    Connection,
    Kind,
    ProtocolError,
    Push,
    Rejection,
    Role,
    State,
    decode_frame,
    encode_frame,
)
from crdtsync.protocol.frames import MAX_REASON

from .test_protocol import deliver, pair


def push(c: Connection, r: Connection, push_id: int, *change_ids: int) -> None:
    c.send(Push(push_id, tuple(Change(i, "accounts", f"r{i}", b"u") for i in change_ids)))
    deliver(c, r)
    assert [type(e) for e in r.events_received()] == [Push]


def test_one_frame_answers_several_pushes_and_comes_back_as_one_ack_each() -> None:
    c, r = pair()
    push(c, r, 1, 10, 11)
    push(c, r, 2, 20)
    push(c, r, 3, 30, 31, 32)
    acks = (Ack(1, (10, 11)), Ack(2, (), (Rejection(20, "invalid", "bad"),)),
            Ack(3, (30,), (Rejection(31, "forbidden", "no"),), (32,)))
    r.send(Acks(acks))
    [frame] = r.data_to_send()
    assert frame[0] == VERSION and decode_frame(frame).header["ids"] == [1, 2, 3]
    c.receive_data(frame)
    assert c.events_received() == list(acks)
    assert c.pushes_in_flight == 0 and c.state is State.READY
    assert r.ack_for(1) is None and r.ack_for(3) is None


def test_a_single_ack_is_a_frame_of_one_push() -> None:
    c, r = pair()
    push(c, r, 7, 1)
    r.send(Ack(7, (1,)))
    [frame] = r.data_to_send()
    assert decode_frame(frame).header == {"ids": [7], "ok": [1], "rejected": [], "held": []}
    c.receive_data(frame)
    assert c.events_received() == [Ack(7, (1,))]


def test_acks_the_relay_may_not_combine_raise_local_errors() -> None:
    c, r = pair()
    push(c, r, 1, 10)
    push(c, r, 2, 10)  # the same change id again, in another push (a resend): cannot be told apart
    push(c, r, 3, 30)
    with pytest.raises(LocalProtocolError, match="shares change ids"):
        r.send(Acks((Ack(1, (10,)), Ack(2, (10,)))))
    with pytest.raises(LocalProtocolError, match="shares change ids"):
        r.send(Acks((Ack(3, (30,)), Ack(3, (30,)))))
    with pytest.raises(LocalProtocolError, match="at least one"):
        r.send(Acks(()))
    with pytest.raises(LocalProtocolError, match="exactly once"):
        r.send(Acks((Ack(1, (10,)), Ack(3, ()))))
    with pytest.raises(LocalProtocolError, match="no push 9"):
        r.send(Acks((Ack(1, (10,)), Ack(9, ()))))
    assert r.data_to_send() == [] and r.ack_for(1) == frozenset({10})  # nothing sent, nothing forgotten
    r.send(Acks((Ack(1, (10,)), Ack(3, (30,)))))  # the distinct ones may go together
    r.send(Ack(2, (10,)))
    deliver(r, c)
    assert [a.id for a in c.events_received()] == [1, 3, 2]  # type: ignore[union-attr]
    assert c.pushes_in_flight == 0


def raw_frame(kind: Kind, header: dict[str, object]) -> bytes:
    """A frame made by hand, past ``encode_frame``'s own checks."""
    out = bytearray((VERSION, kind))
    write_bytes(out, orjson.dumps(header))
    return bytes(out)


def ack_frame(ids: list[int], ok: list[int], held: list[int] | None = None,
              rejected: list[list[object]] | None = None, waits: list[list[object]] | None = None) -> bytes:
    header = {"ids": ids, "ok": ok, "rejected": rejected or [], "held": held or []}
    return encode_frame(Kind.ACK, header if waits is None else {**header, "waits": waits})


@pytest.mark.parametrize("frame, reason", [
    (ack_frame([1, 9], [10, 11]), "answers no push in flight"),
    (ack_frame([1, 1], [10, 11]), "answers no push in flight"),
    (ack_frame([1, 3], [10, 11]), "share change id 10"),
    (ack_frame([1, 2], [10, 11]), "exactly once"),  # change 20 of push 2 left out
    (ack_frame([1, 2], [10, 11, 20], [20]), "exactly once"),  # change 20 both stored and held
    (ack_frame([1, 2], [10, 11, 20, 99]), "exactly once"),  # a change of no push answered
    (ack_frame([1, 2], [10, 11], rejected=[[20, "invalid", "x"], [20, "invalid", "x"]]), "exactly once"),
    (raw_frame(Kind.ACK, {"ids": [], "ok": [], "rejected": [], "held": []}), "non-empty"),
    (ack_frame([1, 2], [10, 11], [20], waits=[[10, "why"]]), "gives reasons"),  # a reason for a stored change
    (ack_frame([1, 2], [10, 11], [20], waits=[[20, "why"], [20, "why"]]), "gives reasons"),  # twice
])
def test_a_bad_combined_ack_from_the_relay_is_a_protocol_error(frame: bytes, reason: str) -> None:
    c, r = pair()
    push(c, r, 1, 10, 11)
    push(c, r, 2, 20)
    push(c, r, 3, 10)
    c.receive_data(frame)
    [ev] = c.events_received()
    assert isinstance(ev, ProtocolError) and ev.code == 4400 and reason in ev.reason
    assert c.state is State.CLOSED


def test_a_peer_of_the_previous_protocol_version_is_refused_by_the_version_byte() -> None:
    """Version 1 had ``id`` (one push) in its ACK header: a version-1 peer is told so, not misread."""
    r = Connection(Role.RELAY)
    r.receive_data(bytes((1,)) + encode_frame(Kind.HELLO, {"device": "d", "client": "c"})[1:])
    [ev] = r.events_received()
    assert isinstance(ev, ProtocolError) and "unsupported protocol version 1" in ev.reason


def test_the_reasons_of_held_changes_go_to_the_ack_of_their_push() -> None:
    """ACK's optional ``waits``: (change id, reason) of held changes, split per push like the rest, and left
    out of the frame when there is none (a client that predates the field refuses it)."""
    c, r = pair()
    push(c, r, 1, 10, 11)
    push(c, r, 2, 20, 21)
    acks = (Ack(1, (10,), (), (11,), ((11, "waits for device 'a'"),)),
            Ack(2, (), (), (20, 21), ((20, "waits for device 'b'"),)))  # 21: held behind 20, no reason
    r.send(Acks(acks))
    [frame] = r.data_to_send()
    assert decode_frame(frame).header["waits"] == [[11, "waits for device 'a'"], [20, "waits for device 'b'"]]
    c.receive_data(frame)
    assert c.events_received() == list(acks)
    push(c, r, 3, 30)
    r.send(Ack(3, (), (), (30,)))
    [frame] = r.data_to_send()
    assert "waits" not in decode_frame(frame).header
    c.receive_data(frame)
    assert c.events_received() == [Ack(3, (), (), (30,))]
    push(c, r, 4, 40)
    with pytest.raises(LocalProtocolError, match="only for changes it holds"):
        r.send(Ack(4, (40,), waits=((40, "stored, yet waits?"),)))


def test_a_refusal_reason_over_the_frame_limit_is_cut_and_still_reaches_the_device() -> None:
    """A relay's refusal naming a long record id or value went over the 500-character reason limit: the
    ACK failed to encode and the session ended with 1011 instead of telling the device."""
    c, r = pair()
    push(c, r, 1, 10, 11)
    long = "accounts/" + "x" * 700 + ": name: too long"
    r.send(Acks((Ack(1, (), (Rejection(10, "invalid", long),), (11,), ((11, "waits for " + "y" * 600),)),)))
    [frame] = r.data_to_send()
    c.receive_data(frame)
    [ack] = c.events_received()
    assert isinstance(ack, Ack) and c.state is State.READY
    [rej] = ack.rejected
    assert len(rej.reason) == MAX_REASON and rej.reason.startswith("accounts/xxx") and rej.reason.endswith("\u2026")
    r.send(Bye(4400, "z" * 900))
    [bye] = r.data_to_send()
    assert len(decode_frame(bye).header["reason"]) == MAX_REASON
