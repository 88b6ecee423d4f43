"""Small pure parts: backoff, grants, writer tags."""

from __future__ import annotations

import pytest

from crdtsync.client import Backoff
from crdtsync.relay import Grant, Tokens
from crdtsync.relay.log import is_own_writer


def test_backoff_grows_exponentially_with_full_jitter_and_resets() -> None:
    b = Backoff(base=1.0, factor=2.0, cap=10.0, random=lambda: 1.0)
    assert [b.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    b.reset()
    assert b.next() == 1.0
    low = Backoff(base=1.0, random=lambda: 0.0)
    assert low.next() == 0.0  # full jitter: anywhere from 0 to the ceiling
    with pytest.raises(ValueError):
        Backoff(base=0)


def test_grants() -> None:
    g = Grant("alice", frozenset({"accounts"}), frozenset({"notes"}), {"accounts": {"owner": "alice"}},
              frozenset({"r1"}), frozenset({"lobby"}))
    assert g.can_read("accounts") and g.can_read("notes") and not g.can_read("secrets")
    assert g.can_write("notes") and not g.can_write("accounts")
    assert g.in_scope("accounts", {"owner": "alice"}) and not g.in_scope("accounts", {"owner": "bob"})
    assert g.in_scope("notes", {})
    assert g.can_join_room("lobby") and not g.can_write_room("lobby") and g.can_write_room("r1")
    assert g.names("read") == ("accounts", "notes") and g.names("write") == ("notes",)
    t = Tokens({"s3cret": g})
    assert t.grant("s3cret") is g and t.grant("s3cre") is None and t.grant(None) is None and t.grant("") is None
    assert Tokens(None).grant(None) is not None  # open (development) relay


@pytest.mark.parametrize("writer, device, own", [
    ("phone", "phone", True), ("phone#2", "phone", True), ("phone#x", "phone", False),
    ("phone2", "phone", False), ("other#1", "phone", False), ("phone#1#1", "phone", False),
])
def test_writer_tags(writer: str, device: str, own: bool) -> None:
    assert is_own_writer(writer, device) is own
