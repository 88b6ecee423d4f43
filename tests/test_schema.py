"""Validation: every bad local write raises a clear ValidationError naming collection, record and field, and
stores nothing; values pycrdt cannot hold never reach it. Schema.to_dict/from_dict round trips."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtsync import (
    Bool,
    Collection,
    Counter,
    Date,
    DateTime,
    Float,
    Int,
    Ref,
    Replica,
    Schema,
    SchemaError,
    Set,
    Str,
    Text,
    ValidationError,
)
from crdtsync.testing import Cluster, field_values, invalid_values, records, schemas

SCHEMA = Schema(Collection("accounts", {
    "name": Str(required=True, max_length=10, min_length=2), "code": Str(choices=("a", "b"), pattern=None),
    "zip": Str(pattern=r"\d{5}"), "employees": Int(min=0, max=1000), "big": Int(), "price": Float(min=0),
    "ratio": Float(allow_nan=True), "ok": Bool(), "due": Date(), "at": DateTime(), "notes": Text(max_length=20),
    "visits": Counter(), "tags": Set(Str(max_length=5), max_items=2), "parent": Ref("accounts"),
}))


@pytest.fixture
def r() -> Replica:
    return Cluster(SCHEMA, 1).replicas[0]


def dump(r: Replica) -> list[tuple[Any, bytes]]:
    return r.store.load_range(())


CASES: list[tuple[str, Any, str]] = [
    ("name", None, "required"),
    ("name", "x" * 11, "max_length=10"),
    ("name", "x", "min_length=2"),
    ("name", 5, "expected a str"),
    ("name", "\ud800", "surrogate"),
    ("code", "c", "not one of the allowed values"),
    ("zip", "1234", "does not match pattern"),
    ("employees", -1, "less than min=0"),
    ("employees", 1001, "more than max=1000"),
    ("employees", 1.0, "expected an int"),
    ("employees", True, "expected an int"),
    ("big", 2**63, "does not fit in 64 bits"),
    ("big", -(2**63) - 1, "does not fit in 64 bits"),
    ("big", 2**64, "does not fit in 64 bits"),
    ("price", math.nan, "does not allow NaN"),
    ("price", math.inf, "does not allow NaN"),
    ("price", -1.0, "less than min"),
    ("price", 2**70, "too large"),
    ("ok", 1, "expected a bool"),
    ("due", dt.datetime(2024, 1, 1), "expected a datetime.date"),
    ("due", "2024-01-01", "expected a datetime.date"),
    ("at", dt.date(2024, 1, 1), "expected a datetime.datetime"),
    ("notes", "x" * 21, "max_length=20"),
    ("visits", 2**63, "64 bits"),
    ("visits", "1", "expected an int"),
    ("tags", "abc", "expected a set"),
    ("tags", {"k": 1}, "expected a set"),
    ("tags", {"a", "b", "c"}, "max_items=2"),
    ("tags", {"toolong"}, "max_length=5"),
    ("tags", {None}, "cannot hold None"),
    ("parent", "", "1 to 200"),
    ("parent", 7, "record id"),
]


@pytest.mark.parametrize(("field", "value", "reason"), CASES, ids=[f"{c[0]}={c[1]!r}"[:40] for c in CASES])
def test_bad_update_raises_and_stores_nothing(r: Replica, field: str, value: Any, reason: str) -> None:
    rid = r.create("accounts", {"name": "Acme"}, id="a1")
    before, pending = dump(r), r.pending()
    with pytest.raises(ValidationError) as e:
        r.update("accounts", rid, {"name": "Acme2", field: value})
    assert (e.value.collection, e.value.record, e.value.field) == ("accounts", "a1", field)
    assert reason in str(e.value) and str(e.value).startswith(f"accounts/a1.{field}: ")
    assert dump(r) == before and r.pending() == pending
    rec = r.get("accounts", rid)
    assert rec is not None and rec.fields["name"] == "Acme"


@pytest.mark.parametrize(("values", "field", "reason"), [
    ({"name": "Acme", "nope": 1}, "nope", "unknown field"),
    ({"name": "Acme", 5: 1}, "5", "field names must be str"),
    ({"name": "Acme", ("t",): 1}, "('t',)", "field names must be str"),
    ({}, "name", "is required"),
])
def test_bad_create_raises_and_stores_nothing(r: Replica, values: dict[Any, Any], field: str, reason: str) -> None:
    before = dump(r)
    with pytest.raises(ValidationError) as e:
        r.create("accounts", values, id="a1")
    assert e.value.field == field and reason in str(e.value)
    assert dump(r) == before and r.get("accounts", "a1") is None


def test_bad_collection_record_id_and_shape(r: Replica) -> None:
    with pytest.raises(ValidationError, match="unknown collection"):
        r.create("nope", {"name": "Acme"})
    with pytest.raises(ValidationError, match="record ids"):
        r.create("accounts", {"name": "Acme"}, id="")
    with pytest.raises(ValidationError, match="record ids"):
        r.create("accounts", {"name": "Acme"}, id="a\x00b")
    with pytest.raises(ValidationError, match="expected a mapping"):
        r.create("accounts", [("name", "Acme")])  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="not a counter"):
        rid = r.create("accounts", {"name": "Acme"})
        r.increment("accounts", rid, "employees", 1)


def test_no_panic_exception_for_values_pycrdt_cannot_hold(r: Replica) -> None:
    """pycrdt raises a BaseException (PanicException) on 2**64 or non-str keys; crdtsync refuses first."""
    rid = r.create("accounts", {"name": "Acme"})
    for values in ({"big": 2**64}, {"big": -(2**64)}, {"visits": 10**30}, {1: 2}, {"tags": {2**64}}):
        try:
            r.update("accounts", rid, values)  # type: ignore[arg-type]
        except ValidationError:
            continue
        except BaseException as e:  # the point: nothing else escapes
            pytest.fail(f"{values!r} raised {type(e).__name__} instead of ValidationError")
        pytest.fail(f"{values!r} was accepted")


@settings(derandomize=True, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_drawn_invalid_values_are_refused_and_valid_ones_accepted(data: st.DataObject) -> None:
    coll = SCHEMA["accounts"]
    name = data.draw(st.sampled_from(sorted(coll.fields)))
    f = coll.fields[name]
    bad = data.draw(invalid_values(f))
    with pytest.raises(Exception) as e:  # checked just below
        coll.check("x", {name: bad}, create=False)
    assert isinstance(e.value, ValidationError), repr(e.value)
    good = data.draw(field_values(f))
    assert name in coll.check("x", {name: good}, create=False)


@settings(derandomize=True, max_examples=40, deadline=None)
@given(schemas(max_collections=3))
def test_schema_to_dict_from_dict_round_trip(schema: Schema) -> None:
    d = schema.to_dict()
    back = Schema.from_dict(d)
    assert back == schema and back.to_dict() == d
    import orjson

    assert Schema.from_dict(orjson.loads(orjson.dumps(d))) == schema  # survives JSON, as shipped to a relay


@settings(derandomize=True, max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_drawn_records_are_created_and_read_back(data: st.DataObject) -> None:
    schema = data.draw(schemas())
    coll = data.draw(st.sampled_from(list(schema)))
    values = data.draw(records(coll))
    r = Cluster(schema, 1).replicas[0]
    rid = r.create(coll.name, values)
    rec = r.get(coll.name, rid)
    assert rec is not None
    checked = coll.check(rid, values, create=True)
    for name, v in checked.items():
        f = coll.fields[name]
        assert f.encode(rec.fields[name]) == f.encode(v) if f.merge == "register" else rec.fields[name] == v


@pytest.mark.parametrize(("make", "reason"), [
    (lambda: Collection("bad name", {}), "collection name"),
    (lambda: Collection("a", {"id": Str()}), "field name"),
    (lambda: Collection("a", {"x": 5}), "not a field type"),
    (lambda: Collection("a", {}, delete_policy="nope"), "delete_policy"),
    (lambda: Schema(Collection("a", {"p": Ref("b")})), "unknown collection"),
    (lambda: Schema(Collection("a", {}), Collection("a", {})), "defined twice"),
    (lambda: Set(Text()), "Set elements"),
    (lambda: Set(Float()), "Set elements"),
    (lambda: Str(pattern="("), "does not compile"),
    (lambda: Schema.from_dict({"version": 2}), "unsupported schema version"),
    (lambda: Schema.from_dict({"version": 1, "collections": [{"name": "a", "fields": {"x": {"type": "?"}}}]}),
     "unknown field type"),
    (lambda: Schema.from_dict({"version": 1, "collections": [{"name": "a", "fields": {"x": {"type": "int",
                                                                                            "nope": 1}}}]}),
     "collection 'a', field 'x': int field: unknown key 'nope'"),
])
def test_malformed_schemas_raise_schema_error(make: Any, reason: str) -> None:
    with pytest.raises(SchemaError, match=reason):
        make()


def test_text_and_counter_and_set_defaults() -> None:
    assert Text().check(None) == "" and Counter().check(None) == 0 and Set(Int()).check(None) == frozenset()
    with pytest.raises(Exception, match="cannot be empty"):
        Text(required=True).check("")


def _one(fields: dict[str, Any], **coll: Any) -> dict[str, Any]:
    return {"version": 1, "collections": [{"name": "notes", "fields": fields, **coll}]}


@pytest.mark.parametrize(("d", "message"), [
    (_one({"t": {"type": "str", "max_length": "3"}}),
     "collection 'notes', field 't': str field: option max_length must be None or an int >= 0, got '3'"),
    (_one({"t": {"type": "str", "max_length": -3}}), "field 't': str field: option max_length must be"),
    (_one({"t": {"type": "str", "min_length": 4, "max_length": 3}}), "min_length=4 is more than max_length=3"),
    (_one({"t": {"type": "text", "max_length": 2.5}}), "field 't': text field: option max_length must be"),
    (_one({"n": {"type": "int", "min": 5, "max": 1}}), "field 'n': int field: min=5 is more than max=1"),
    (_one({"n": {"type": "int", "min": "0"}}), "field 'n': int field: option min must be"),
    (_one({"n": {"type": "int", "max": True}}), "option max must be"),
    (_one({"n": {"type": "int", "choices": [1, "2"]}}), "option choices must hold only int, got '2'"),
    (_one({"f": {"type": "float", "min": 2.0, "max": 1.0}}), "field 'f': float field: min=2.0 is more than max"),
    (_one({"f": {"type": "float", "max": "NaN"}}), "option max must be None or a finite number"),
    (_one({"f": {"type": "float", "allow_nan": "yes"}}), "option allow_nan must be True or False"),
    (_one({"t": {"type": "str", "required": "no"}}), "field 't': str field: option required must be True or False"),
    (_one({"t": {"type": "str", "choices": "abc"}}), "option choices must be None or a non-empty list or tuple"),
    (_one({"t": {"type": "str", "choices": []}}), "option choices must be None or a non-empty list or tuple"),
    (_one({"t": {"type": "str", "choices": ["a", 1]}}), "option choices must hold only str, got 1"),
    (_one({"t": {"type": "str", "pattern": 5}}), "option pattern must be"),
    (_one({"s": {"type": "set", "max_items": -1}}), "field 's': set field: option max_items must be"),
    (_one({"s": {"type": "set", "of": {"type": "str", "max_length": -1}}}),
     "field 's': set field: option of: str field: option max_length must be"),
    (_one({"r": {"type": "ref", "collection": 5}}), "field 'r': ref field: option collection must be"),
    (_one({"t": {"type": "str", "maxlength": 3}}), "field 't': str field: unknown key 'maxlength'"),
    (_one({"t": "str"}), "field 't': a field must be a dict"),
    (_one({"t": {"type": "str"}}, **{"delete-policy": "edit-wins"}), "collection 'notes': unknown key 'delete-policy'"),
    ({"version": 1, "collections": [], "colections": []}, "schema: unknown key 'colections'"),
    ({"version": 1, "collections": [{"name": "a", "fields": {}}, {"fields": {}}]}, "collection #2 has no 'name'"),
    ({"version": 1, "collections": [{"name": "a"}]}, "collection 'a': fields must be a dict"),
    ({"version": 1, "collections": {"a": {}}}, "collections must be a list"),
    ('{"version": 1, "collections": []}', "not JSON text: parse it first"),
    ([], "not a list"),
])
def test_from_dict_refuses_bad_options_and_unknown_keys_naming_them(d: Any, message: str) -> None:
    with pytest.raises(SchemaError) as e:
        Schema.from_dict(d)
    assert message in str(e.value)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Str(max_length=-1), "str field: option max_length must be None or an int >= 0, got -1"),
    (lambda: Str(choices="abc"), "option choices must be None or a non-empty list or tuple of str"),  # type: ignore[arg-type]
    (lambda: Str(required="no"), "option required must be True or False"),  # type: ignore[arg-type]
    (lambda: Int(min=5, max=1), "int field: min=5 is more than max=1"),
    (lambda: Int(min=2**63), "option min must be"),
    (lambda: Float(min=math.nan), "option min must be None or a finite number"),
    (lambda: Text(max_length=-1), "text field: option max_length must be"),
    (lambda: Set(str), "option of must be a field type such as Str() or Int(), not str"),  # type: ignore[arg-type]
    (lambda: Str(choices=["abcdef"], max_length=3), "the choice 'abcdef' breaks the field's own rules: is 6 "),
    (lambda: Int(choices=[1, 50], max=10), "int field: the choice 50 breaks the field's own rules: 50 is more"),
    (lambda: Schema.from_dict({"version": True, "collections": []}), "unsupported schema version True"),
    (lambda: Set(Str(), max_items=-2), "option max_items must be"),
    (lambda: Collection("a", [Str()]), "a: fields must be a dict"),  # type: ignore[arg-type]
    (lambda: Collection("a", {"x": str}), "a.x: the Python type str is not a field type"),  # type: ignore[dict-item]
    (lambda: Collection(5, {}), "collection name 5 must be a str"),  # type: ignore[arg-type]
    (lambda: Schema([Collection("a", {})]), "Schema takes its collections as separate arguments"),  # type: ignore[arg-type]
    (lambda: Schema({"version": 1}), "Schema takes Collection objects, not a dict"),  # type: ignore[arg-type]
])
def test_constructors_refuse_bad_options(make: Any, message: str) -> None:
    with pytest.raises(SchemaError) as e:
        make()
    assert message in str(e.value)


def test_replica_open_refuses_a_dict_for_a_schema_and_names_a_missing_directory(tmp_path: Any) -> None:
    with pytest.raises(SchemaError, match="the schema must be a crdtsync Schema, not a dict"):
        Replica.open(tmp_path / "r.db", {"version": 1}, device="d", user="u")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
    missing = tmp_path / "nope" / "r.db"
    with pytest.raises(FileNotFoundError) as e:
        Replica.open(missing, SCHEMA, device="d", user="u")
    assert str(e.value) == f"[Errno 2] its directory {tmp_path / 'nope'} does not exist (create it first): '{missing}'"


def test_a_counter_set_to_none_is_refused_not_reset(r: Replica) -> None:
    rid = r.create("accounts", {"name": "Acme"}, id="a1")
    r.increment("accounts", rid, "visits", 3)
    with pytest.raises(ValidationError, match=r"^accounts/a1\.visits: a counter cannot be set to None"):
        r.update("accounts", rid, {"visits": None})
    with pytest.raises(ValidationError, match="a counter cannot be set to None"):
        r.create("accounts", {"name": "Acme", "visits": None})
    rec = r.get("accounts", rid)
    assert rec is not None and rec.fields["visits"] == 3


def test_an_int_enum_is_stored_and_shown_as_a_plain_int(r: Replica) -> None:
    import enum

    class Size(enum.IntEnum):
        BIG = 500

    rid = r.create("accounts", {"name": "Acme", "employees": Size.BIG, "visits": Size.BIG})
    rec = r.get("accounts", rid)
    assert rec is not None
    assert type(rec.fields["employees"]) is int and type(rec.fields["visits"]) is int
    assert rec.fields["employees"] == 500 and rec.fields["visits"] == 500


def test_increment_of_an_int_field_says_an_int(r: Replica) -> None:
    rid = r.create("accounts", {"name": "Acme"})
    with pytest.raises(ValidationError, match=r"\.employees: is an int field, not a counter$"):
        r.increment("accounts", rid, "employees", 1)


def test_a_length_of_one_is_said_in_the_singular(r: Replica) -> None:
    with pytest.raises(ValidationError, match="is 1 character long, less than min_length=2"):
        r.create("accounts", {"name": "x"})


def test_subscribe_refuses_what_is_not_callable(r: Replica) -> None:
    with pytest.raises(TypeError, match="subscribe takes a function of a ChangeEvent, not 5"):
        r.subscribe(5)  # type: ignore[arg-type]
