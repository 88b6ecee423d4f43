"""Tokens and grants: who a device is, and which collections, records and Yjs rooms it may read or write.

The tokens file is TOML (read with the standard ``tomllib``)::

    [tokens."s3cret-alice"]
    user = "alice"
    read = ["accounts", "contacts"]     # "*" for all
    write = ["accounts"]
    where = { accounts = { owner = "alice" } }   # optional: only records whose field matches
    rooms = ["*"]                       # plain Yjs rooms it may join and write
    rooms_read_only = ["lobby"]         # rooms it may join to read only

Tokens are looked up by their SHA-256 digest, so the table never compares secrets byte by byte.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from ..errors import LocalError

__all__ = ["ALL", "Grant", "Tokens", "load_tokens", "unknown_names"]

ALL = "*"


def _names(v: Any, what: str) -> frozenset[str]:
    if v == ALL:
        return frozenset({ALL})
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise LocalError(f"{what} must be \"*\" or a list of names")
    return frozenset(v)


@dataclass(frozen=True)
class Grant:
    """What one token may do. ``where`` limits a collection to records whose fields equal the values.
    ``anonymous``: the user is not known (an open relay without tokens), so changes may name any user."""

    user: str
    read: frozenset[str] = frozenset()
    write: frozenset[str] = frozenset()
    where: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    rooms: frozenset[str] = frozenset()
    rooms_read_only: frozenset[str] = frozenset()
    anonymous: bool = False

    @classmethod
    def open(cls, user: str = "dev") -> Grant:
        """Everything allowed: the relay's development mode without a tokens file."""
        everything = frozenset({ALL})
        return cls(user, everything, everything, {}, everything, frozenset(), anonymous=True)

    @staticmethod
    def _has(names: frozenset[str], name: str) -> bool:
        return ALL in names or name in names

    def can_read(self, collection: str) -> bool:
        return self._has(self.read, collection) or self._has(self.write, collection)

    def can_write(self, collection: str) -> bool:
        return self._has(self.write, collection)

    def in_scope(self, collection: str, fields: Mapping[str, Any]) -> bool:
        """True when a record with these (merged) fields is within the ``where`` limit of its collection."""
        cond = self.where.get(collection)
        return cond is None or all(fields.get(k) == v for k, v in cond.items())

    def limited(self, collection: str) -> bool:
        return collection in self.where

    def can_join_room(self, room: str) -> bool:
        return self._has(self.rooms, room) or self._has(self.rooms_read_only, room)

    def can_write_room(self, room: str) -> bool:
        return self._has(self.rooms, room)

    def scopes(self) -> dict[str, str]:
        """For each readable collection limited by ``where``, a fingerprint of its limit (WELCOME's
        ``scopes``): a device stores it with its cursor and learns that its limit changed when the
        fingerprint does (without being told the limit itself)."""
        return {c: hashlib.blake2b(orjson.dumps(cond, option=orjson.OPT_SORT_KEYS, default=str),
                                   digest_size=8).hexdigest()
                for c, cond in sorted(self.where.items()) if self.can_read(c)}

    def names(self, which: Literal["read", "write"]) -> tuple[str, ...] | Literal["*"]:
        """The collections granted for reading (which includes writing) or writing, or "*"."""
        names = self.write if which == "write" else self.read | self.write
        return "*" if ALL in names else tuple(sorted(names))


class Tokens:
    """The token table. ``grant(token)`` is None for a missing or unknown token. ``open`` tables (no tokens
    file) grant everything to everyone, for development only."""

    def __init__(self, grants: Mapping[str, Grant] | None) -> None:
        self.open = grants is None
        self._by_digest = {_digest(t): g for t, g in (grants or {}).items()}

    def scope_fields(self) -> dict[str, frozenset[str]]:
        """Per collection, every field some token's ``where`` limit looks at: a change to one of them may
        move a record into or out of a device's scope."""
        out: dict[str, set[str]] = {}
        for g in self._by_digest.values():
            for c, cond in g.where.items():
                out.setdefault(c, set()).update(cond)
        return {c: frozenset(f) for c, f in out.items()}

    def grant(self, token: str | None) -> Grant | None:
        if self.open:
            return Grant.open()
        if not token:
            return None
        return self._by_digest.get(_digest(token))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _grant(token: str, d: Any) -> Grant:
    where = f"token {token[:4]}…"
    if not isinstance(d, dict) or not isinstance(d.get("user"), str) or not d["user"]:
        raise LocalError(f"{where}: needs a user = \"...\"")
    unknown = set(d) - {"user", "read", "write", "where", "rooms", "rooms_read_only"}
    if unknown:
        raise LocalError(f"{where}: unknown keys {sorted(unknown)}")
    cond = d.get("where", {})
    if not isinstance(cond, dict) or not all(isinstance(v, dict) for v in cond.values()):
        raise LocalError(f"{where}: where must map collections to {{field = value}} tables")
    return Grant(d["user"], _names(d.get("read", []), f"{where}: read"), _names(d.get("write", []), f"{where}: write"),
                 {c: dict(v) for c, v in cond.items()}, _names(d.get("rooms", []), f"{where}: rooms"),
                 _names(d.get("rooms_read_only", []), f"{where}: rooms_read_only"))


def unknown_names(grants: Mapping[str, Grant], collections: Mapping[str, Any]) -> list[str]:
    """What the grants name that the schema does not have (``collections``: name -> ``Collection``): a
    collection in ``read``, ``write`` or ``where``, or a field in ``where``; and room names that look like
    patterns. A typo there only showed later, as every write refused or every record out of scope."""
    out = []
    for g in grants.values():
        for kind, names in (("read", g.read), ("write", g.write)):
            out += [f"user {g.user!r}: {kind} names unknown collection {n!r}"
                    for n in sorted(names - {ALL}) if n not in collections]
        for c, cond in g.where.items():
            coll = collections.get(c)
            if coll is None:
                out.append(f"user {g.user!r}: where names unknown collection {c!r}")
                continue
            out += [f"user {g.user!r}: where names unknown field {c}.{f}"
                    for f in sorted(cond) if f not in coll.fields]
        for kind, rooms in (("rooms", g.rooms), ("rooms_read_only", g.rooms_read_only)):
            # only "*" alone is a pattern: "bob-*" was taken literally, and bob-x refused, without a word
            out += [f"user {g.user!r}: {kind} names {r!r}, but only \"*\" alone means more than one room; "
                    "list the rooms" for r in sorted(rooms - {ALL}) if "*" in r]
    return sorted(set(out))


def load_tokens(path: str | Path) -> dict[str, Grant]:
    """Read a tokens file; raises ``LocalError`` saying what is wrong with it."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise LocalError(f"cannot read tokens file {path}: {e}") from None
    tokens = doc.get("tokens")
    if not isinstance(tokens, dict):
        raise LocalError(f"{path}: expected [tokens.\"<token>\"] tables")
    return {t: _grant(t, d) for t, d in tokens.items()}
