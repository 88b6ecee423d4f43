"""Misusing the Replica API gives a clear LocalError: a record id that is not a str (it reached the store's
key encoder, or read as a missing record), a single collection name where a list of them is expected (it
was read as the names of its characters: "a: unknown collection"). Nothing is changed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from crdtsync import Collection, Counter, LocalError, RecordNotFound, Replica, Schema, Str, ValidationError

SCHEMA = Schema(Collection("accounts", {"name": Str(), "visits": Counter()}))

BY_ID: dict[str, Callable[[Replica, Any], object]] = {
    "get": lambda r, i: r.get("accounts", i),
    "status": lambda r, i: r.status("accounts", i),
    "history": lambda r, i: r.history("accounts", i),
    "update": lambda r, i: r.update("accounts", i, {"name": "y"}),
    "increment": lambda r, i: r.increment("accounts", i, "visits"),
    "delete": lambda r, i: r.delete("accounts", i),
    "restore": lambda r, i: r.restore("accounts", i),
    "resolve": lambda r, i: r.resolve("accounts", i, "name", "z"),
    "discard_record": lambda r, i: r.discard_record("accounts", i),
    "fix": lambda r, i: r.fix("accounts", i, {"name": "z"}),
    "retry": lambda r, i: r.retry("accounts", i),
    "evict": lambda r, i: r.evict([("accounts", "a1"), ("accounts", i)]),
}


@pytest.mark.parametrize("bad", [None, 5, b"a1", ("a1",)], ids=repr)
@pytest.mark.parametrize("method", sorted(BY_ID))
def test_a_record_id_that_is_not_a_str_raises_clearly(method: str, bad: object) -> None:
    r = Replica.open(":memory:", SCHEMA, device="a", user="u")
    r.create("accounts", {"name": "x"}, id="a1")
    before = r.store.load_range(())
    with pytest.raises(LocalError, match=r"^accounts/.*: record ids are str, not "):
        BY_ID[method](r, bad)
    assert r.store.load_range(()) == before


BY_COLLECTIONS: dict[str, Callable[[Replica, Any], object]] = {
    "export_updates": lambda r, c: r.export_updates(c),
    "state_vectors": lambda r, c: r.state_vectors(c),
    "outgoing": lambda r, c: r.outgoing(c),
}


@pytest.mark.parametrize("method", sorted(BY_COLLECTIONS))
def test_one_collection_name_where_a_list_is_expected_raises_clearly(method: str) -> None:
    r = Replica.open(":memory:", SCHEMA, device="a", user="u")
    r.create("accounts", {"name": "x"}, id="a1")
    with pytest.raises(LocalError, match=r"collections is a list of collection names, not a str: "
                                         r"pass \['accounts'\]"):
        BY_COLLECTIONS[method](r, "accounts")
    assert BY_COLLECTIONS[method](r, ["accounts"])  # the list works


@pytest.mark.parametrize("method", ["fix", "retry", "discard_record"])
def test_the_outbox_methods_raise_record_not_found_for_a_missing_record(method: str) -> None:
    """As ``update``, ``delete``, ``status``... do: ``retry`` returned None silently, ``fix`` raised "has no
    rejected change", ``discard_record`` returned []. A record that exists keeps its answer."""
    r = Replica.open(":memory:", SCHEMA, device="a", user="u")
    r.create("accounts", {"name": "x"}, id="a1")
    r.acknowledge([p.id for p in r.pending()])
    with pytest.raises(RecordNotFound, match=r"^accounts/nope does not exist$"):
        BY_ID[method](r, "nope")
    if method == "fix":
        with pytest.raises(LocalError, match="has no rejected change"):
            BY_ID[method](r, "a1")
    else:
        assert BY_ID[method](r, "a1") in (None, [])


def test_a_collection_object_or_a_where_of_another_kind_says_what_to_pass() -> None:
    r = Replica.open(":memory:", SCHEMA, device="a", user="u")
    coll = next(iter(SCHEMA))
    with pytest.raises(ValidationError, match=r"pass the collection's name \('accounts'\)") as e:
        r.query(coll)  # type: ignore[arg-type]
    assert len(str(e.value)) < 120
    with pytest.raises(ValidationError, match="pass the collection's name"):
        r.get(coll, "a1")  # type: ignore[arg-type]
    for where in ([("name", "x")], "name"):
        with pytest.raises(LocalError, match="where is a mapping of field names to values, or a function"):
            r.query("accounts", where=where)  # type: ignore[arg-type]
