"""The protocol core on its own: no sockets, bytes in, events and bytes out."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtsync.errors import LocalProtocolError
from crdtsync.protocol import (
    Ack,
    Bye,
    Change,
    Changes,
    Connection,
    Hello,
    Item,
    Kind,
    Live,
    ProtocolError,
    Pull,
    Push,
    Rejection,
    Role,
    State,
    Welcome,
    decode_frame,
    encode_frame,
)


def pair() -> tuple[Connection, Connection]:
    """A client and a relay core joined by hand, past the handshake."""
    c, r = Connection(Role.CLIENT), Connection(Role.RELAY)
    c.send(Hello("dev-1"))
    deliver(c, r)
    r.send(Welcome("alice", "relay-1", 0, 0, "*", ("accounts",)))
    deliver(r, c)
    assert [type(e) for e in c.events_received()] == [Welcome]
    assert [type(e) for e in r.events_received()] == [Hello]
    return c, r


def deliver(src: Connection, dst: Connection) -> None:
    for data in src.data_to_send():
        dst.receive_data(data)


def test_a_push_and_its_ack_round_trip() -> None:
    c, r = pair()
    c.send(Push(1, (Change(10, "accounts", "a1", b"u1"), Change(11, "accounts", "a2", b"u2"))))
    deliver(c, r)
    [push] = r.events_received()
    assert isinstance(push, Push) and push.changes[1].update == b"u2"
    r.send(Ack(1, (10,), (Rejection(11, "forbidden", "no"),)))
    deliver(r, c)
    [ack] = c.events_received()
    assert ack == Ack(1, (10,), (Rejection(11, "forbidden", "no"),), ())
    assert c.pushes_in_flight == 0


def test_pull_pages_then_live() -> None:
    c, r = pair()
    c.send(Pull(7, 0, None, None, True))
    deliver(c, r)
    r.send(Changes(7, (Item("accounts", "a1", 3, b"x"),), 1, 2, 3, True))
    r.send(Changes(7, (), 2, 2, 4, False))
    r.send(Live((Item("accounts", "a1", 5, b"y"),)))
    deliver(r, c)
    evs = c.events_received()
    assert [type(e) for e in evs] == [Changes, Changes, Live]
    assert c.pull_in_flight is None and c.state is State.READY


def test_misuse_raises_local_errors() -> None:
    c = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        c.send(Push(1, ()))  # before HELLO
    c, r = pair()
    with pytest.raises(LocalProtocolError):
        r.send(Ack(99, ()))  # no such push
    c.send(Pull(1, 0))
    with pytest.raises(LocalProtocolError):
        c.send(Pull(2, 0))  # one pull at a time
    with pytest.raises(LocalProtocolError):
        c.send(Welcome("x", "y", 0, 0, "*", "*"))  # a client never sends WELCOME


@pytest.mark.parametrize("data, reason", [
    (b"", "truncated"),
    (b"\x03\x01\x00", "unsupported protocol version 3"),
    (b"\x02\x63\x00", "unknown frame kind"),
    (b"\x02\x01\x05{}", "truncated"),
    (encode_frame(Kind.HELLO, {"device": "d", "client": "c"}) + b"!", "unexpected bytes"),
    (b"\x02\x01\x02{}", "lacks 'device'"),
    (b"\x02\x01\x03nul", "not JSON"),
    (encode_frame(Kind.PUSH, {"id": 1, "changes": []}), "unexpected PUSH"),
])
def test_garbage_becomes_an_error_event_and_a_bye(data: bytes, reason: str) -> None:
    r = Connection(Role.RELAY)
    r.receive_data(data)
    [ev] = r.events_received()
    assert isinstance(ev, ProtocolError) and ev.code == 4400 and reason in ev.reason
    [bye] = r.data_to_send()
    frame = decode_frame(bye)
    assert frame.kind is Kind.BYE and frame.header["code"] == 4400
    assert r.state is State.CLOSED
    r.receive_data(encode_frame(Kind.HELLO, {"device": "d", "client": "c"}))
    assert r.events_received() == [] and r.data_to_send() == []


def test_oversized_frames_close_with_1009() -> None:
    r = Connection(Role.RELAY, max_frame=100)
    r.receive_data(b"\x02\x01" + b"x" * 200)
    [ev] = r.events_received()
    assert isinstance(ev, ProtocolError) and ev.code == 1009


def test_out_of_order_answers_are_protocol_errors() -> None:
    c, _ = pair()
    r2 = Connection(Role.RELAY)  # a relay core that knows of a push the client never made
    r2.receive_data(encode_frame(Kind.HELLO, {"device": "d", "client": "c"}))
    r2.send(Welcome("a", "b", 0, 0, "*", "*"))
    r2.receive_data(encode_frame(Kind.PUSH, {"id": 5, "changes": [[1, "c", "r"]]}, [b"u"]))
    r2.send(Ack(5, (1,)))
    r2.data_to_send()
    c.receive_data(encode_frame(Kind.ACK, {"ids": [5], "ok": [1], "rejected": [], "held": []}))
    [ev] = c.events_received()
    assert isinstance(ev, ProtocolError) and "answers no push" in ev.reason
    c2, _ = pair()
    c2.send(Push(1, (Change(1, "a", "b", b""),)))
    c2.receive_data(encode_frame(Kind.ACK, {"ids": [1], "ok": [1, 2], "rejected": [], "held": []}))
    [ev2] = c2.events_received()
    assert isinstance(ev2, ProtocolError) and "exactly once" in ev2.reason


# -- Hypothesis: random and mutated frame sequences never raise and never reach an impossible state ------

names = st.text(min_size=1, max_size=8)
ints = st.integers(min_value=0, max_value=2**63 - 1)
blobs = st.binary(max_size=16)

valid_frames = st.one_of(
    st.builds(lambda d: encode_frame(Kind.HELLO, {"device": d, "client": "x"}), names),
    st.builds(lambda u, h: encode_frame(Kind.WELCOME, {"user": u, "relay": "r", "head": h, "floor": 0,
                                                       "read": "*", "write": ["a"], "max_frame": 1 << 20,
                                                       "last": 0}),
              names, ints),
    st.builds(lambda i, cs: encode_frame(Kind.PUSH, {"id": i, "changes": [[c, "a", "r"] for c in cs]},
                                         [b"u"] * len(cs)),
              st.integers(0, 3), st.lists(st.integers(0, 5), max_size=3)),
    st.builds(lambda ids, ok: encode_frame(Kind.ACK, {"ids": ids, "ok": ok, "rejected": [], "held": []}),
              st.lists(st.integers(0, 3), min_size=1, max_size=3), st.lists(st.integers(0, 5), max_size=3)),
    st.builds(lambda i, live, back: encode_frame(Kind.PULL, {"id": i, "since": 0, "relay": None, "collections": None,
                                                             "live": live, "returns": back}),
              st.integers(0, 3), st.booleans(), st.lists(st.integers(0, 5), max_size=2)),
    st.builds(lambda i, more, done: encode_frame(Kind.CHANGES, {"id": i, "items": [["a", "r", 1]], "done": done,
                                                                "total": 2, "to": 1, "more": more, "reset": False},
                                                 [b"x"]), st.integers(0, 3), st.booleans(), st.integers(0, 3)),
    st.builds(lambda b: encode_frame(Kind.LIVE, {"items": [["a", "r", 1]]}, [b]), blobs),
    st.builds(lambda c: encode_frame(Kind.BYE, {"code": c, "reason": "bye"}), st.integers(1000, 4999)),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_frames))
    op = draw(st.sampled_from(["keep", "flip", "truncate", "extend", "version", "kind"]))
    if op == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    elif op == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif op == "extend":
        data += draw(st.binary(min_size=1, max_size=8))
    elif op == "version":
        data[0] = draw(st.integers(0, 255))
    elif op == "kind":
        data[1] = draw(st.integers(0, 255))
    return bytes(data)


frames = st.one_of(valid_frames, mutated(), st.binary(max_size=64))


@settings(derandomize=True, max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(role=st.sampled_from(list(Role)), inputs=st.lists(frames, max_size=12), handshake=st.booleans())
def test_core_never_raises_and_stays_consistent(role: Role, inputs: list[bytes], handshake: bool) -> None:
    conn = Connection(role, max_frame=1024, max_pushes_in_flight=2)
    if handshake:  # start from READY so that deeper states are explored too
        if role is Role.CLIENT:
            conn.send(Hello("me"))
            conn.receive_data(encode_frame(Kind.WELCOME, {"user": "u", "relay": "r", "head": 0, "floor": 0,
                                                          "read": "*", "write": "*", "max_frame": 1 << 20, "last": 0}))
            conn.send(Push(1, (Change(1, "a", "r", b""), Change(2, "a", "r", b""))))
            conn.send(Pull(1, 0))
        else:
            conn.receive_data(encode_frame(Kind.HELLO, {"device": "d", "client": "c"}))
            conn.send(Welcome("u", "r", 0, 0, "*", "*"))
        conn.events_received()
        conn.data_to_send()
    closed = False
    for data in inputs:
        conn.receive_data(data)
        events = conn.events_received()
        out = conn.data_to_send()
        assert conn.state in State
        if closed:
            assert events == [] and out == []  # nothing happens after the end
            continue
        assert conn.pushes_in_flight <= 2
        assert conn.state is not State.AWAIT_WELCOME or role is Role.CLIENT
        assert conn.state is not State.HELLO_RECEIVED or role is Role.RELAY
        errors = [e for e in events if isinstance(e, ProtocolError)]
        if errors:
            assert len(errors) == 1 and events[-1] is errors[0] and conn.state is State.CLOSED
            assert errors[0].reason
            bye = decode_frame(out[-1])
            assert bye.kind is Kind.BYE and bye.header["code"] == errors[0].code
        else:
            assert out == []  # a core never answers by itself, except with a BYE on error
        if any(isinstance(e, Bye) for e in events):
            assert conn.state is State.CLOSED
        closed = conn.state is State.CLOSED


def test_a_push_over_the_size_limit_is_refused_both_ways() -> None:
    c, r = pair()
    big = Push(1, tuple(Change(i, "a", "r", b"") for i in range(4)))
    small_c = Connection(Role.CLIENT, max_push=3)
    small_c.send(Hello("d"))
    small_c.receive_data(encode_frame(Kind.WELCOME, {"user": "u", "relay": "r", "head": 0, "floor": 0,
                                                     "read": "*", "write": "*", "max_frame": 1 << 20, "last": 0}))
    with pytest.raises(LocalProtocolError, match="at most 3"):
        small_c.send(big)
    small_r = Connection(Role.RELAY, max_push=3)
    small_r.receive_data(encode_frame(Kind.HELLO, {"device": "d", "client": "c"}))
    small_r.send(Welcome("u", "r", 0, 0, "*", "*"))
    small_r.events_received()
    c.send(big)
    for data in c.data_to_send():
        small_r.receive_data(data)
    [ev] = small_r.events_received()
    assert isinstance(ev, ProtocolError) and "more than the limit of 3" in ev.reason
    del r
