"""Schemas: collections of typed fields, validation, and the JSON form shipped to a relay.

A field type does three things, all pure: ``check()`` a Python value (returning it normalised or raising
``Invalid`` with a reason), ``encode()`` it to a JSON value, and ``decode()`` it back. Values are encoded
by crdtsync itself (orjson) and stored in pycrdt as strings, so an int stays an int (pycrdt alone turns 5
into 5.0) and nothing pycrdt cannot hold ever reaches it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .errors import SchemaError, ValidationError

__all__ = [
    "Bool",
    "Collection",
    "Counter",
    "Date",
    "DateTime",
    "DeletePolicy",
    "Field",
    "Float",
    "Int",
    "Invalid",
    "Ref",
    "Schema",
    "Set",
    "Str",
    "Strategy",
    "Text",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

DeletePolicy = Literal["delete-wins", "edit-wins"]
Strategy = Literal["crdt", "lww-field", "lww-record", "lww-patch"]
STRATEGIES: tuple[str, ...] = ("crdt", "lww-field", "lww-record", "lww-patch")
DELETE_POLICIES: tuple[str, ...] = ("delete-wins", "edit-wins")


class Invalid(Exception):
    """Internal: a value broke a field's rule; the caller adds collection/record/field."""


def _check_str(value: Any, what: str = "a str") -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected {what}, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid("string is not valid Unicode (lone surrogate)") from None
    return value


def _characters(n: int) -> str:
    return "1 character" if n == 1 else f"{n} characters"


@dataclass(frozen=True)
class Field:
    """Base of all field types. ``merge`` says how concurrent writes combine."""

    kind: ClassVar[str] = ""
    merge: ClassVar[Literal["register", "text", "counter", "set"]] = "register"
    required: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        _bool_option(self, "required")
        self._check_options()

    def _check_options(self) -> None:
        """Raise ``SchemaError`` for an option of the wrong type or out of range (and normalise ``choices``)."""

    def check(self, value: Any) -> Any:
        """Return ``value`` normalised, or raise ``Invalid``. ``None`` clears an optional field."""
        if value is None:
            if self.required:
                raise Invalid("is required and cannot be None")
            return None
        return self._check(value)

    def _check(self, value: Any) -> Any:
        raise NotImplementedError

    def encode(self, value: Any) -> Any:
        """The JSON form of a checked value."""
        return value

    def decode(self, raw: Any) -> Any:
        """The Python value of a JSON form produced by ``encode`` (checked again: it may come from a peer)."""
        if raw is None:
            return None
        return self._check(raw)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.kind}
        for name, value in self.__dict__.items():
            if value is None or (value is False and name == "required"):
                continue
            if isinstance(value, Field):
                d[name] = value.to_dict()
            elif isinstance(value, frozenset | tuple):
                d[name] = sorted(value, key=repr) if isinstance(value, frozenset) else list(value)
            else:
                d[name] = value
        return d


def _option_error(f: Field, name: str, want: str) -> SchemaError:
    return SchemaError(f"{f.kind} field: option {name} must be {want}, got {getattr(f, name)!r}")


def _choices_fit(f: Str | Int) -> None:
    """Every choice passes the field's other rules (else it could never be written)."""
    for v in f.choices or ():
        try:
            f._check(v)
        except Invalid as e:
            raise SchemaError(f"{f.kind} field: the choice {v!r} breaks the field's own rules: {e}") from None


def _bool_option(f: Field, name: str) -> None:
    if not isinstance(getattr(f, name), bool):
        raise _option_error(f, name, "True or False")


def _int_option(f: Field, name: str, low: int | None = 0) -> None:
    """An optional int option: None, or an int (not a bool) of at least ``low``, within 64 bits."""
    value = getattr(f, name)
    if value is None:
        return
    want = "None or an int" + (f" >= {low}" if low is not None else " within 64 bits")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _option_error(f, name, want)
    if not (INT64_MIN if low is None else low) <= value <= INT64_MAX:
        raise _option_error(f, name, want)


def _number_option(f: Field, name: str) -> None:
    value = getattr(f, name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                              or not math.isfinite(value)):
        raise _option_error(f, name, "None or a finite number")


def _ordered(f: Field, low: str, high: str) -> None:
    a, b = getattr(f, low), getattr(f, high)
    if a is not None and b is not None and a > b:
        raise SchemaError(f"{f.kind} field: {low}={a!r} is more than {high}={b!r}: no value could be written")


def _choices_option(f: Str | Int, kind: type, what: str) -> None:
    """``choices``: None, or a non-empty list or tuple of values of the field's kind (kept as a tuple)."""
    values = f.choices
    if values is None:
        return
    if not isinstance(values, list | tuple) or not values:
        raise _option_error(f, "choices", f"None or a non-empty list or tuple of {what}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, kind):
            raise SchemaError(f"{f.kind} field: option choices must hold only {what}, got {v!r}")
    object.__setattr__(f, "choices", tuple(values))


@dataclass(frozen=True)
class Str(Field):
    """A short string: names, emails, codes. ``choices`` limits it to allowed values."""

    kind: ClassVar[str] = "str"
    max_length: int | None = None
    min_length: int | None = None
    choices: tuple[str, ...] | None = None
    pattern: str | None = None

    def _check_options(self) -> None:
        _int_option(self, "max_length")
        _int_option(self, "min_length")
        _ordered(self, "min_length", "max_length")
        _choices_option(self, str, "str")
        if self.pattern is not None:
            if not isinstance(self.pattern, str):
                raise _option_error(self, "pattern", "None or a str (a regular expression)")
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise SchemaError(f"Str pattern {self.pattern!r} does not compile: {e}") from None
        _choices_fit(self)

    def _check(self, value: Any) -> str:
        s = _check_str(value)
        if self.max_length is not None and len(s) > self.max_length:
            raise Invalid(f"is {_characters(len(s))} long, more than max_length={self.max_length}")
        if self.min_length is not None and len(s) < self.min_length:
            raise Invalid(f"is {_characters(len(s))} long, less than min_length={self.min_length}")
        if self.choices is not None and s not in self.choices:
            raise Invalid(f"{s!r} is not one of the allowed values {list(self.choices)}")
        if self.pattern is not None and re.fullmatch(self.pattern, s) is None:
            raise Invalid(f"{s!r} does not match pattern {self.pattern!r}")
        return s


@dataclass(frozen=True)
class Int(Field):
    """A 64-bit signed integer; it stays an int through every round trip."""

    kind: ClassVar[str] = "int"
    min: int | None = None
    max: int | None = None
    choices: tuple[int, ...] | None = None

    def _check_options(self) -> None:
        _int_option(self, "min", None)
        _int_option(self, "max", None)
        _ordered(self, "min", "max")
        _choices_option(self, int, "int")
        _choices_fit(self)

    def _check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an int, got {type(value).__name__}")
        if not INT64_MIN <= value <= INT64_MAX:
            raise Invalid(f"{value} does not fit in 64 bits")
        if self.min is not None and value < self.min:
            raise Invalid(f"{value} is less than min={self.min}")
        if self.max is not None and value > self.max:
            raise Invalid(f"{value} is more than max={self.max}")
        if self.choices is not None and value not in self.choices:
            raise Invalid(f"{value} is not one of the allowed values {list(self.choices)}")
        return value if value.__class__ is int else int(value)  # an IntEnum: shown as the int others read


_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass(frozen=True)
class Float(Field):
    """A float. NaN and infinities are refused unless ``allow_nan=True``."""

    kind: ClassVar[str] = "float"
    min: float | None = None
    max: float | None = None
    allow_nan: bool = False

    def _check_options(self) -> None:
        _number_option(self, "min")
        _number_option(self, "max")
        _ordered(self, "min", "max")
        _bool_option(self, "allow_nan")

    def _check(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"expected a float, got {type(value).__name__}")
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            raise Invalid(f"{value} is too large")
        f = float(value)
        if not math.isfinite(f):
            if not self.allow_nan:
                raise Invalid(f"{f} is not allowed (the field does not allow NaN or infinity)")
            return f
        if self.min is not None and f < self.min:
            raise Invalid(f"{f} is less than min={self.min}")
        if self.max is not None and f > self.max:
            raise Invalid(f"{f} is more than max={self.max}")
        return f

    def encode(self, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return value

    def decode(self, raw: Any) -> Any:
        if isinstance(raw, str) and raw in _NONFINITE:
            return self._check(_NONFINITE[raw])
        return super().decode(raw)


@dataclass(frozen=True)
class Bool(Field):
    kind: ClassVar[str] = "bool"

    def _check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise Invalid(f"expected a bool, got {type(value).__name__}")
        return value


@dataclass(frozen=True)
class Date(Field):
    """A calendar date (``datetime.date``), stored as ISO 8601."""

    kind: ClassVar[str] = "date"

    def _check(self, value: Any) -> dt.date:
        if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
            raise Invalid(f"expected a datetime.date, got {type(value).__name__}")
        return value

    def encode(self, value: Any) -> Any:
        return None if value is None else value.isoformat()

    def decode(self, raw: Any) -> Any:
        if raw is None:
            return None
        try:
            return dt.date.fromisoformat(_check_str(raw, "an ISO date"))
        except ValueError:
            raise Invalid(f"{raw!r} is not an ISO date") from None


@dataclass(frozen=True)
class DateTime(Field):
    """A point in time (``datetime.datetime``), stored as ISO 8601 with its UTC offset if it has one."""

    kind: ClassVar[str] = "datetime"

    def _check(self, value: Any) -> dt.datetime:
        if not isinstance(value, dt.datetime):
            raise Invalid(f"expected a datetime.datetime, got {type(value).__name__}")
        return value

    def encode(self, value: Any) -> Any:
        return None if value is None else value.isoformat()

    def decode(self, raw: Any) -> Any:
        if raw is None:
            return None
        try:
            return dt.datetime.fromisoformat(_check_str(raw, "an ISO datetime"))
        except ValueError:
            raise Invalid(f"{raw!r} is not an ISO datetime") from None


@dataclass(frozen=True)
class Ref(Field):
    """The id of a record in ``collection`` (which may have been created offline on this device)."""

    kind: ClassVar[str] = "ref"
    collection: str = ""

    def _check_options(self) -> None:
        if not isinstance(self.collection, str) or not _NAME.match(self.collection):
            raise _option_error(self, "collection", "the name of a collection of the schema")

    def _check(self, value: Any) -> str:
        s = _check_str(value, "a record id (str)")
        if not 0 < len(s) <= 200:
            raise Invalid("a record id must be 1 to 200 characters long")
        return s


@dataclass(frozen=True)
class Text(Field):
    """Long text (notes) merged character by character (Y.Text): concurrent edits interleave."""

    kind: ClassVar[str] = "text"
    merge: ClassVar[Literal["register", "text", "counter", "set"]] = "text"
    max_length: int | None = None

    def _check_options(self) -> None:
        _int_option(self, "max_length")

    def _check(self, value: Any) -> str:
        s = _check_str(value)
        if self.max_length is not None and len(s) > self.max_length:
            raise Invalid(f"is {_characters(len(s))} long, more than max_length={self.max_length}")
        return s

    def check(self, value: Any) -> Any:
        if value is None:
            value = ""
        s = self._check(value)
        if self.required and not s:
            raise Invalid("is required and cannot be empty")
        return s


@dataclass(frozen=True)
class Counter(Field):
    """An integer that merges by adding: concurrent increments on several devices all count."""

    kind: ClassVar[str] = "counter"
    merge: ClassVar[Literal["register", "text", "counter", "set"]] = "counter"

    def _check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an int, got {type(value).__name__}")
        if not INT64_MIN <= value <= INT64_MAX:
            raise Invalid(f"{value} does not fit in 64 bits")
        return value if value.__class__ is int else int(value)

    def check(self, value: Any) -> Any:
        return self._check(0 if value is None else value)


@dataclass(frozen=True)
class Set(Field):
    """A set of plain values (tags) that merges add-wins: a concurrent add beats a remove."""

    kind: ClassVar[str] = "set"
    merge: ClassVar[Literal["register", "text", "counter", "set"]] = "set"
    of: Field = field(default_factory=lambda: Str())
    max_items: int | None = None

    def _check_options(self) -> None:
        if not isinstance(self.of, Field):
            shown = self.of.__name__ if isinstance(self.of, type) else repr(self.of)
            raise SchemaError(f"set field: option of must be a field type such as Str() or Int(), not {shown}")
        _int_option(self, "max_items")
        if self.of.merge != "register" or isinstance(self.of, Float):
            raise SchemaError(f"Set elements must be Str, Int, Bool, Date, DateTime or Ref, not {self.of.kind}")
        if self.of.required:
            raise SchemaError("Set elements cannot be 'required'")

    def _check(self, value: Any) -> frozenset[Any]:
        # a str or a dict is iterable too, but taking its characters or keys as elements is never meant
        if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Iterable):
            raise Invalid(f"expected a set, got {type(value).__name__}")
        out = set()
        for item in value:
            if item is None:
                raise Invalid("a set cannot hold None")
            out.add(self.of.check(item))
        if self.max_items is not None and len(out) > self.max_items:
            raise Invalid(f"holds {len(out)} items, more than max_items={self.max_items}")
        return frozenset(out)

    def check(self, value: Any) -> Any:
        return self._check(() if value is None else value)


_TYPES: dict[str, type[Field]] = {
    t.kind: t for t in (Str, Int, Float, Bool, Date, DateTime, Ref, Text, Counter, Set)
}


def _known_keys(d: Mapping[Any, Any], known: Iterable[str], where: str) -> None:
    unknown = [k for k in d if k not in known]
    if unknown:
        raise SchemaError(f"{where}: unknown key {unknown[0]!r}; known: {sorted(known)}")


def field_from_dict(d: Mapping[str, Any]) -> Field:
    """Build a field type from its ``to_dict()`` form; raises ``SchemaError`` for an unknown type or key or a
    bad option."""
    if not isinstance(d, Mapping):
        raise SchemaError(f"a field must be a dict such as {{'type': 'str'}}, got {type(d).__name__}")
    d = dict(d)
    kind = d.pop("type", None)
    if not isinstance(kind, str) or kind not in _TYPES:
        raise SchemaError(f"unknown field type {kind!r}; known: {sorted(_TYPES)}")
    _known_keys(d, [f.name for f in dataclasses.fields(_TYPES[kind])], f"{kind} field")
    if "of" in d:
        try:
            d["of"] = field_from_dict(d["of"])
        except SchemaError as e:
            raise SchemaError(f"set field: option of: {e}") from None
    return _TYPES[kind](**d)


RESERVED_FIELDS = frozenset({"id", "deleted"})


@dataclass(frozen=True)
class Collection:
    """A named kind of record and its fields.

    ``delete_policy`` decides what a delete that meets a concurrent edit does: ``delete-wins`` keeps the
    record deleted and surfaces the edit as a conflict it can be restored from; ``edit-wins`` brings the
    record back and surfaces the delete. ``strategy`` picks the merge strategy (see docs/strategies.md).
    """

    name: str
    fields: Mapping[str, Field]
    delete_policy: DeletePolicy = "delete-wins"
    strategy: Strategy = "crdt"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SchemaError(f"collection name {self.name!r} must be a str matching {_NAME.pattern}")
        if not isinstance(self.fields, Mapping):
            raise SchemaError(f"{self.name}: fields must be a dict of field name to field type, such as "
                              f"{{'title': Str()}}, not a {type(self.fields).__name__}")
        for name, f in self.fields.items():
            if not isinstance(name, str) or not _NAME.match(name) or name in RESERVED_FIELDS:
                raise SchemaError(f"{self.name}: field name {name!r} must match {_NAME.pattern} "
                                  f"and not be one of {sorted(RESERVED_FIELDS)}")
            if not isinstance(f, Field):
                shown = f"the Python type {f.__name__}" if isinstance(f, type) else repr(f)
                raise SchemaError(f"{self.name}.{name}: {shown} is not a field type (Str(), Int(), ...)")
        if self.delete_policy not in DELETE_POLICIES:
            raise SchemaError(f"{self.name}: delete_policy must be one of {DELETE_POLICIES}")
        if self.strategy not in STRATEGIES:
            raise SchemaError(f"{self.name}: strategy must be one of {STRATEGIES}")
        object.__setattr__(self, "fields", dict(self.fields))

    def field(self, record: str | None, name: str) -> Field:
        try:
            return self.fields[name]
        except KeyError:
            raise ValidationError(self.name, record, name,
                                  f"unknown field; {self.name} has {sorted(self.fields)}") from None

    def check(self, record: str | None, values: Mapping[str, Any], *, create: bool) -> dict[str, Any]:
        """Check a whole write; returns the normalised values or raises ``ValidationError``."""
        if type(values) is not dict and not isinstance(values, Mapping):  # (an ABC check costs 0.5 us)
            raise ValidationError(self.name, record, None, f"expected a mapping of fields, got {type(values).__name__}")
        out: dict[str, Any] = {}
        for name, value in values.items():
            if not isinstance(name, str):
                raise ValidationError(self.name, record, repr(name), "field names must be str")
            f = self.field(record, name)
            if value is None and f.merge == "counter":  # (``Counter.check`` reads None as 0: a silent reset)
                raise ValidationError(self.name, record, name, "a counter cannot be set to None: write a number "
                                      "(0 resets it) or increment() it")
            try:
                out[name] = f.check(value)
            except Invalid as e:
                raise ValidationError(self.name, record, name, str(e)) from None
        if create:
            for name, f in self.fields.items():
                if f.required and name not in out:
                    raise ValidationError(self.name, record, name, "is required")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "delete_policy": self.delete_policy, "strategy": self.strategy,
                "fields": {n: f.to_dict() for n, f in self.fields.items()}}


class Schema:
    """The collections an app keeps. ``Schema.from_dict(s.to_dict())`` gives an equal schema."""

    def __init__(self, *collections: Collection) -> None:
        self.collections: dict[str, Collection] = {}
        for c in collections:
            if isinstance(c, list | tuple):
                raise SchemaError("Schema takes its collections as separate arguments: Schema(Collection(...), "
                                  f"Collection(...)), or Schema(*collections) for a {type(c).__name__}")
            if not isinstance(c, Collection):
                raise SchemaError(f"Schema takes Collection objects, not a {type(c).__name__} "
                                  "(Schema.from_dict builds one from its dict form)")
            if c.name in self.collections:
                raise SchemaError(f"collection {c.name!r} is defined twice")
            self.collections[c.name] = c
        for c in collections:
            for name, f in c.fields.items():
                targets = [f] + ([f.of] if isinstance(f, Set) else [])
                for t in targets:
                    if isinstance(t, Ref) and t.collection not in self.collections:
                        raise SchemaError(f"{c.name}.{name} refers to unknown collection {t.collection!r}")

    def __getitem__(self, name: str) -> Collection:
        return self.collection(name)

    def __iter__(self) -> Any:
        return iter(self.collections.values())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))

    def collection(self, name: str) -> Collection:
        try:
            return self.collections[name]
        except (KeyError, TypeError):
            raise ValidationError(str(name), None, None,
                                  f"unknown collection; the schema has {sorted(self.collections)}") from None

    def with_strategy(self, strategy: Strategy) -> Schema:
        """The same schema with every collection on ``strategy`` (for comparisons)."""
        return Schema(*(Collection(c.name, c.fields, c.delete_policy, strategy) for c in self))

    def to_dict(self) -> dict[str, Any]:
        """The schema as plain JSON-able data (``{"version": 1, "collections": [...]}``): what the relay's
        ``--schema FILE.json`` reads, and ``Schema.from_dict`` turns back into an equal schema."""
        return {"version": 1, "collections": [c.to_dict() for c in self]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Schema:
        """The schema of a ``to_dict()`` dict (as read back from JSON). Raises ``SchemaError`` naming the
        collection, the field and the option for anything malformed: an unknown key at any level, an option
        of the wrong type or out of range, a field type or collection missing."""
        if isinstance(d, str | bytes | bytearray):
            raise SchemaError("Schema.from_dict takes the dict of Schema.to_dict(), not JSON text: parse it "
                              "first (json.loads)")
        if not isinstance(d, Mapping):
            raise SchemaError(f"Schema.from_dict takes the dict of Schema.to_dict(), not a {type(d).__name__}")
        _known_keys(d, ("version", "collections"), "schema")
        if d.get("version") != 1 or isinstance(d.get("version"), bool):
            raise SchemaError(f"unsupported schema version {d.get('version')!r}")
        colls = d.get("collections")
        if not isinstance(colls, list | tuple):
            raise SchemaError(f"schema: collections must be a list of collection dicts, got {colls!r}"[:300])
        return cls(*(_collection_from_dict(i, c) for i, c in enumerate(colls, 1)))


def _collection_from_dict(i: int, c: Any) -> Collection:
    if not isinstance(c, Mapping):
        raise SchemaError(f"collection #{i}: must be a dict, got {type(c).__name__}")
    if "name" not in c:
        raise SchemaError(f"collection #{i} has no 'name'")
    where = f"collection {c['name']!r}"
    _known_keys(c, ("name", "fields", "delete_policy", "strategy"), where)
    fields = c.get("fields")
    if not isinstance(fields, Mapping):
        raise SchemaError(f"{where}: fields must be a dict of field name to field dict, got "
                          f"{type(fields).__name__}")
    built: dict[str, Field] = {}
    for name, f in fields.items():
        try:
            built[name] = field_from_dict(f)
        except SchemaError as e:
            raise SchemaError(f"{where}, field {name!r}: {e}") from None
    return Collection(c["name"], built, c.get("delete_policy", "delete-wins"), c.get("strategy", "crdt"))
