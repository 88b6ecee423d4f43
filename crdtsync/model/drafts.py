"""The legacy adapter: offline "drafts" replayed at a server, last applied wins. No I/O.

This emulates how mainstream mobile CRM apps sync offline edits (see docs/strategies.md for the exact
behaviour and why): every local change is a *draft* of the record, queued on the device in the order it was
made; the server applies drafts in the order they arrive, each one overwriting the record with no version
or conflict check; the device then downloads the server's copy, which replaces its own.

Two variants, chosen by the collection's strategy:

- ``lww-record`` (whole record): a draft is the whole record as the device last saw it, with its edits.
  Applying it puts every field back to the device's copy, so fields the device never touched revert to
  its stale values: that is how an edit made on another device gets lost.
- ``lww-patch`` (changed fields only): a draft carries the whole copy too, but only the fields the device
  changed are applied. Edits of different fields survive; of two edits of one field, the one applied last
  wins, whoever made it and whatever they had seen.

Both variants: a draft for a record the server has deleted (or never had) is rejected as ``gone`` (a
create or restore is applied); a delete of an already deleted record is a no-op; the server remembers, per
writer, the latest draft it applied, so a retried draft is applied once (an idempotency key, which is more
than many apps do: being generous to the legacy side keeps the comparison honest).

Document layout (in the ``f`` root map of the record's Yjs document, like the crdt slots):

- ``@draft\\x1f<writer>\\x1f<t>``: one key per draft, JSON ``{f, d, k, o, b, dv, u}``: the device's copy of
  the fields (encoded), its deleted flag, the fields it changed (``@deleted`` for create/delete/restore),
  the operation, the server image number the copy was based on, device and user. ``t`` is its HLC time,
  which is also the outbox change id.
- ``@image`` (written only by the server, writer ``#server``): the server's copy ``{f, d, n, a, t, by}``;
  ``n`` counts applied drafts, ``a`` maps each writer to the latest of its drafts the server has processed.

A device shows the server's image with its own drafts that the image does not cover yet replayed on top, so
local edits show at once and disappear when the server's copy says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from ..clock import MAX_TIME
from ..errors import RemoteValidationError
from ..schema import Collection, Field, Invalid
from .layouts import DRAFT, IMAGE, foreign_entry, record_mismatch
from .record import RecordDoc
from .slots import DELETED, SEP, Slot
from .state import UNWRITTEN, Candidate, RecordState, hidden_fields

__all__ = ["DRAFT", "IMAGE", "SERVER_WRITER", "Draft", "DraftMode", "DraftRecordDoc", "Image", "Replay",
           "apply_draft", "decode_value", "encode_value", "shown_value"]

SERVER_WRITER = "#server"  # device names cannot hold '#', so this never collides with a device

DraftMode = Literal["whole-record", "changed-fields"]


def encode_value(f: Field, value: Any) -> Any:
    """A field value as JSON, for every kind of field (a draft holds plain values, even for text or sets)."""
    if f.merge == "set":
        of = f.of  # type: ignore[attr-defined]
        return sorted((of.encode(v) for v in value), key=repr)
    if f.merge in ("text", "counter"):
        return value
    return f.encode(value)


def decode_value(f: Field, raw: Any) -> Any:
    """A field's value from its JSON in a draft; ``Invalid`` (or the decoder's TypeError) if it is not one."""
    if raw is None:
        return UNWRITTEN[f.merge]
    if f.merge == "set":
        if not isinstance(raw, list):  # (a str would be read as the set of its characters)
            raise Invalid(f"a set is stored as a list, not {type(raw).__name__}")
        of = f.of  # type: ignore[attr-defined]
        return frozenset(of.decode(v) for v in raw)
    if f.merge == "text":
        if not isinstance(raw, str):
            raise Invalid(f"a text is stored as a str, not {type(raw).__name__}")
        return raw
    if f.merge == "counter":
        if raw.__class__ is not int:
            raise Invalid(f"a counter is stored as an int, not {type(raw).__name__}")
        return raw
    return f.decode(raw)


def shown_value(f: Field, raw: Any) -> Any:
    """What a draft's value shows as when ``decode_value`` refuses it (written under older rules or another
    kind, as a merge brings it): a plain field's value as stored; a set's elements that still read (or
    are plain values), a text, counter or set that another kind wrote as never written (as under ``crdt``,
    docs/records.md, schema changes)."""
    if f.merge == "register":
        return raw
    if f.merge == "set" and isinstance(raw, list):
        of = f.of  # type: ignore[attr-defined]
        out = set()
        for v in raw:
            try:
                out.add(of.decode(v))
            except (Invalid, TypeError, ValueError, AttributeError):
                if isinstance(v, str | int | float | bool):
                    out.add(v)
        return frozenset(out)
    return UNWRITTEN[f.merge]


@dataclass(frozen=True, slots=True)
class Draft:
    """One pending change as sent to the server: the device's copy of the record, with its edits."""

    writer: str
    t: int
    device: str
    user: str
    op: str
    fields: dict[str, Any]
    deleted: bool
    changed: tuple[str, ...]
    base: int

    @property
    def revives(self) -> bool:
        """A create or restore: the one kind of draft a missing or deleted record accepts."""
        return DELETED in self.changed and not self.deleted


@dataclass(frozen=True, slots=True)
class Image:
    """The server's copy of a record: what every device shows once it has no draft of its own pending."""

    fields: dict[str, Any]
    deleted: bool
    n: int
    applied: dict[str, int]
    t: int
    by: dict[str, tuple[str, str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Replay:
    """What the server did with the drafts that arrived: the image update to send, applied and rejected."""

    update: bytes
    applied: tuple[Draft, ...]
    rejected: tuple[Draft, ...]


@dataclass
class _View:
    fields: dict[str, Any]
    deleted: bool
    exists: bool
    by: dict[str, tuple[str, str, int]]


def apply_draft(mode: DraftMode, fields: dict[str, Any], deleted: bool, draft: Draft) -> tuple[dict[str, Any], bool]:
    """The record after ``draft`` overwrote it (no check of any kind: that is the point)."""
    if mode == "whole-record":
        return dict(draft.fields), draft.deleted
    out = dict(fields)
    for name in draft.changed:
        if name == DELETED:
            deleted = draft.deleted
        else:
            out[name] = draft.fields.get(name)
    return out, deleted


def _parse_draft(key: str, raw: Any) -> Draft:
    _, writer, t_hex = key.split(SEP)
    p = orjson.loads(raw)
    f, d, k = p["f"], p["d"], p["k"]
    if not (isinstance(f, dict) and isinstance(d, bool) and isinstance(k, list)
            and all(isinstance(x, str) for x in k)):
        raise ValueError(f"bad draft {key!r}")
    t = int(t_hex, 16)
    if not 0 < t < MAX_TIME:
        raise ValueError(f"bad draft {key!r}: time out of range")
    return Draft(writer, t, str(p["dv"]), str(p["u"]), str(p["o"]), f, d, tuple(k), int(p["b"]))


def _parse_image(raw: Any) -> Image:
    p = orjson.loads(raw)
    f, d, n, a, t = p["f"], p["d"], p["n"], p["a"], p["t"]
    if not (isinstance(f, dict) and isinstance(d, bool) and isinstance(n, int) and isinstance(a, dict)
            and all(isinstance(v, int) for v in a.values()) and isinstance(t, int) and 0 <= t < MAX_TIME):
        raise ValueError("bad image")
    by = {k: (str(v[0]), str(v[1]), int(v[2])) for k, v in p.get("by", {}).items()}
    return Image(f, d, n, a, t, by)


class DraftRecordDoc(RecordDoc):
    """A record under ``lww-record`` or ``lww-patch``: drafts written by devices, images by the server."""

    def __init__(self, collection: Collection, record_id: str, *, writer: str, device: str, user: str,
                 client_id: int, updates: Iterable[bytes] = (), held: Iterable[bytes] = (),
                 wall: Callable[[], int] | None = None) -> None:
        self.mode: DraftMode = "changed-fields" if collection.strategy == "lww-patch" else "whole-record"
        # drafts parsed (and checked) before, by key, with the raw value they were parsed from: a record
        # keeps every draft ever made, and parsing them all again for each change grew without bound
        self._parsed_drafts: dict[str, tuple[Any, Draft]] = {}
        self._checked: dict[str, Any] = {}
        super().__init__(collection, record_id, writer=writer, device=device, user=user, client_id=client_id,
                         updates=updates, held=held)

    # -- reading -------------------------------------------------------------------------------------------

    def slots(self) -> dict[str, Slot]:
        return {}  # no per-field slots under this strategy

    def drafts(self) -> list[Draft]:
        """Every draft this document holds, oldest first."""
        # one read of the whole map (``_read``): iterating a pycrdt Map costs a transaction per key
        entries = self._read(self._slots)
        out = [self._draft(k, v) for k, v in entries.items() if k.startswith(DRAFT + SEP)]
        if len(out) < len(entries) - (IMAGE in entries):
            # a slot of crdt or lww-field (a store switched strategies before that was refused): it says so,
            # where the record read as missing and a delete wrote a draft beside it
            err = record_mismatch(self.collection.name, self.id, self.collection.strategy, entries.items())
            if err is not None:
                raise err
        out.sort(key=lambda d: (d.t, d.writer))
        return out

    def _draft(self, key: str, raw: Any) -> Draft:
        hit = self._parsed_drafts.get(key)
        if hit is None or hit[0] != raw:
            hit = self._parsed_drafts[key] = (raw, _parse_draft(key, raw))
        return hit[1]

    def image(self) -> Image | None:
        raw = self._slots.get(IMAGE)
        return None if raw is None else _parse_image(raw)

    def _view(self) -> _View:
        img = self.image()
        view = _View(dict(img.fields), img.deleted, True, dict(img.by)) if img else _View({}, False, False, {})
        applied = img.applied if img else {}
        for d in self.drafts():
            if d.t > applied.get(d.writer, 0):
                self._replay_one(view, d)
        return view

    def _replay_one(self, view: _View, d: Draft) -> None:
        view.fields, view.deleted = apply_draft(self.mode, view.fields, view.deleted, d)
        view.exists = True
        for name in d.changed:
            view.by[name] = (d.device, d.user, d.t)

    def state(self) -> RecordState:
        if self._state is None:
            view = self._view()
            coll = self.collection
            values: dict[str, Any] = {}
            for name, f in coll.fields.items():
                try:
                    values[name] = decode_value(f, view.fields.get(name))
                except (Invalid, TypeError, ValueError, AttributeError):  # under other rules or another kind
                    values[name] = shown_value(f, view.fields.get(name))
            vector: dict[str, int] = {}
            for d in self.drafts():
                vector[d.writer] = max(vector.get(d.writer, 0), d.t)
            img = self.image()
            if img is not None:
                vector[SERVER_WRITER] = img.t
            by = {n: Candidate(None, dv, u, t) for n, (dv, u, t) in view.by.items() if n in coll.fields}
            self._state = RecordState(coll.name, self.id, values, view.deleted, (), vector, view.exists,
                                      max(vector.values(), default=0), by,
                                      hidden_fields(coll, [n for n, v in view.fields.items() if v is not None]))
        return self._state

    def max_time(self) -> int:
        return max(self.state().vector.values(), default=0)

    def writers(self) -> set[str]:
        return {d.writer for d in self.drafts()}

    # -- writing (device side) -----------------------------------------------------------------------------

    def _put_draft(self, op: str, fields: dict[str, Any], deleted: bool, changed: list[str], t: int) -> bytes:
        img = self.image()
        body = {"f": fields, "d": deleted, "k": changed, "o": op, "b": img.n if img else 0,
                "dv": self.device, "u": self.user}

        def write() -> None:
            self._slots[f"{DRAFT}{SEP}{self.writer}{SEP}{t:x}"] = orjson.dumps(body).decode()
            self._slot_raw = self._parsed = None
            for name in changed:
                value = deleted if name == DELETED else fields.get(name)
                self._log("deleted" if name == DELETED else name, op, value, t)

        return self._write(write)

    def counter_sum(self, name: str) -> int:
        """A counter's value as this device shows it: a draft holds the field's value, not per-writer shares
        (summing those found none, so ``increment`` set the counter to the increment)."""
        value = self.state().fields.get(name)
        return value if value.__class__ is int else 0

    def write(self, values: Mapping[str, Any], t: int, *, op: str = "set", full_seen: bool = False,
              alive: bool = False, base: Mapping[str, int] | None = None,
              set_edits: Mapping[str, tuple[frozenset[Any], frozenset[Any]]] | None = None) -> bytes:
        """A draft: the record as this device sees it, with ``values`` applied (decoded Python values).

        ``base`` and ``set_edits`` (a saved form) change nothing here: a draft carries no version, and a
        set's value in ``values`` is already the user's edits applied to the record as it is now."""
        view = self._view()
        fields = dict(view.fields)
        changed = [DELETED] if alive else []
        for name, value in values.items():
            fields[name] = encode_value(self.collection.fields[name], value)
            changed.append(name)
        return self._put_draft(op, fields, False if alive else view.deleted, changed, t)

    def set_deleted(self, deleted: bool, t: int, *, full_seen: bool = True) -> bytes:
        view = self._view()
        return self._put_draft("delete" if deleted else "restore", view.fields, deleted, [DELETED], t)

    # -- the server's part ---------------------------------------------------------------------------------

    def replay(self, t: int) -> Replay:
        """Server side: apply every draft not processed yet, oldest first, to the image; write the new image.

        Call it right after applying what one upload brought, so drafts are applied in arrival order. Each
        applied draft overwrites the image (whole record or its changed fields, by ``mode``) with no check
        of any kind; a draft for a record that is gone is rejected (returned, for the device to be told).
        Returns the image update to send to every device (``b""`` if nothing was processed).
        """
        img = self.image()
        fields = dict(img.fields) if img else {}
        deleted = img.deleted if img else False
        exists = img is not None
        applied = dict(img.applied) if img else {}
        by = dict(img.by) if img else {}
        n = img.n if img else 0
        done: list[Draft] = []
        rejected: list[Draft] = []
        for d in self.drafts():
            if d.t <= applied.get(d.writer, 0):
                continue
            applied[d.writer] = d.t
            if (not exists or deleted) and not d.revives:
                if not (DELETED in d.changed and d.deleted):
                    rejected.append(d)
                continue
            fields, deleted = apply_draft(self.mode, fields, deleted, d)
            exists = True
            n += 1
            for name in d.changed:
                by[name] = (d.device, d.user, d.t)
            done.append(d)
        if not done and not rejected and applied == (img.applied if img else {}):
            return Replay(b"", (), ())
        body = orjson.dumps({"f": fields, "d": deleted, "n": n, "a": applied, "t": t,
                             "by": {k: list(v) for k, v in by.items()}}).decode()

        def write() -> None:
            self._slots[IMAGE] = body
            self._slot_raw = self._parsed = None

        return Replay(self._write(write), tuple(done), tuple(rejected))

    # -- checking what a peer sent -------------------------------------------------------------------------

    def check(self, *, rules: bool = True) -> None:
        """Check the drafts and the image against the schema; raise ``RemoteValidationError``.

        ``rules=False`` (a device's merge; see ``model/checks.py``): their structure only. Fields the schema
        lacks are kept (``RecordState.hidden``) and values it would refuse show as stored."""
        coll = self.collection
        try:
            slots = self._read(self._slots)
        except ValueError as e:
            raise RemoteValidationError(coll.name, self.id, None, f"corrupted document: {e}") from None
        for key, raw in slots.items():
            if key in self._checked and self._checked[key] == raw:
                continue  # checked before, unchanged
            try:
                if key == IMAGE:
                    img = _parse_image(raw)
                    values, where = img.fields, "image"
                elif key.startswith(DRAFT + SEP):
                    d = self._draft(key, raw)
                    values, where = d.fields, "draft"
                else:
                    why = foreign_entry(coll.strategy, key, raw)  # (only a refused key pays for it)
                    if why is not None:
                        raise RemoteValidationError(coll.name, self.id, None, why)
                    raise ValueError(f"unexpected key {key!r}")
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as e:
                raise RemoteValidationError(coll.name, self.id, None, f"malformed draft: {e}") from None
            for name, value in values.items() if rules else ():
                f = coll.fields.get(name)
                if f is None:
                    raise RemoteValidationError(coll.name, self.id, name, f"unknown field in {where}")
                try:
                    decode_value(f, value)
                except (Invalid, TypeError, AttributeError) as e:
                    raise RemoteValidationError(coll.name, self.id, name, str(e)) from None
            self._checked[key] = raw
