"""One record as a pycrdt document, and the writes a device can make to it. No I/O.

Layout of the document (root types merge field by field, so two devices creating the same record id
offline merge instead of one replacing the other):

- ``f`` (Map): slots, ``field\\x1fwriter -> JSON {v, t, d, u, c}`` (see ``slots.py``). Text, counter and set
  fields keep a slot too, as a marker of who touched them when (and, for counters, the writer's total).
- ``s`` (Map): add-wins set entries, ``field\\x1felement-json\\x1fwriter -> JSON {a, r}``.
- ``t:<field>`` (Text): one per text field, merged character by character.
- ``h`` (Array): the history, one JSON entry per field change, for audit.

Every write returns the Yjs update it produced; the caller stores and sends those bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson
from pycrdt import Array, Doc, Map, Text, TransactionEvent, get_update, merge_updates

from ..errors import MalformedUpdate, RemoteValidationError
from ..schema import Collection, Field, Invalid
from .checks import check_set_entries, check_slots
from .slots import DELETED, SEP, Slot
from .state import Candidate, HistoryEntry, RecordState, SetEntry, compute_state
from .textdiff import text_edits
from .trace import Traced, Tracer
from .yrs import RawTxn, YDoc, observe

__all__ = ["RecordDoc"]

_EMPTY_UPDATE = b"\x00\x00"
_MISSING = object()


def _parse_slot(key: str, raw: Any) -> Slot:
    name, _, writer = key.partition(SEP)
    if not name or not writer or not isinstance(raw, str):
        raise ValueError(f"bad slot key {key!r}")
    p = orjson.loads(raw)
    t, d, u, c = p["t"], p["d"], p["u"], p["c"]
    # written out rather than ``all(...)``: a merge parses every slot it brings (the generator was a fifth)
    if not (isinstance(t, int) and t > 0 and isinstance(d, str) and isinstance(u, str) and isinstance(c, dict)):
        raise ValueError(f"bad slot {key!r}")
    for v in c.values():
        if not isinstance(v, int):
            raise ValueError(f"bad slot {key!r}")
    return Slot(name, writer, p.get("v"), t, d, u, c)


def _parse_set(key: str, raw: Any) -> SetEntry:
    name, element, writer = key.split(SEP)
    p = orjson.loads(raw)
    a, r = p["a"], p["r"]
    if not (isinstance(a, int) and a >= 0 and isinstance(r, dict) and all(isinstance(v, int) for v in r.values())):
        raise ValueError(f"bad set entry {key!r}")
    return SetEntry(name, element, writer, a, r)


_REGISTERS: dict[int, tuple[Collection, frozenset[str]]] = {}


def _registers(coll: Collection) -> frozenset[str]:
    """The names of the plain (register) fields of a collection, computed once per collection."""
    hit = _REGISTERS.get(id(coll))
    if hit is None or hit[0] is not coll:  # (the collection is kept in the entry: its id stays its own)
        if len(_REGISTERS) >= 1024:
            _REGISTERS.clear()
        hit = _REGISTERS[id(coll)] = (coll, frozenset(n for n, f in coll.fields.items() if f.merge == "register"))
    return hit[1]


class RecordDoc:
    """A record's Yjs document plus the device's identity, with typed writes and a cached merged state."""

    #: whether a local write may derive the new state from the old one (see ``_advanced``); a strategy
    #: whose state follows other rules turns it off
    _advances = True

    def __init__(self, collection: Collection, record_id: str, *, writer: str, device: str, user: str,
                 client_id: int, updates: Iterable[bytes] = (), held: Iterable[bytes] = ()) -> None:
        self.collection = collection
        self.id = record_id
        self.writer = writer
        self.device = device
        self.user = user
        self._captured: list[bytes] = []
        self._log_buf: list[str] = []  # history entries of the write under way (see ``_write``)
        #: every integrated update of the document (merged now and then): what it is rebuilt from when
        #: an update that cannot be integrated yet got into it (see ``apply``)
        self._parts: list[bytes] = list(updates)
        self._tail_bytes = 0  # bytes of the parts after the first: they are merged into it when they outgrow it
        self._tracer: Tracer | None = None  # made by ``apply_traced``, for the document it was made on
        self._build(client_id)
        #: remote updates that arrived before an update they build on; kept out of the document (see
        #: ``apply``) and tried again whenever an update arrives
        self.held: list[bytes] = list(held)
        self._state: RecordState | None = None
        # caches of the document's content, all dropped when a remote update changes it. ``_slot_raw`` and
        # ``_set_raw`` are the JSON strings as read (and written), ``_parsed``/``_set_parsed`` parsed from them
        self._slot_raw: dict[str, Any] | None = None
        self._parsed: dict[str, Slot] | None = None
        self._set_raw: dict[str, Any] | None = None
        self._set_parsed: dict[str, SetEntry] | None = None
        self._text_now: dict[str, str] | None = None
        #: the content as it was before the updates applied since the last ``check``, all of it valid: the
        #: next check validates only the entries that differ from it
        self._base: tuple[dict[str, Any], dict[str, Slot], dict[str, Any] | None,
                          dict[str, SetEntry] | None] | None = None

    def _build(self, client_id: int) -> None:
        """(Re)create the Yjs document from ``_parts``, in one transaction.

        The pycrdt handles of the roots are made on first use (``roots``): a merge reads the roots
        through Yrs handles alone (``_handles``), and making the three wrappers cost half as much as
        applying a record's update.
        """
        if self._tracer is not None:
            self._tracer.close()
            self._tracer = None
        self._ydoc: Any = YDoc(client_id, None, None)
        self._tap_sub: Any = None  # see ``_tap``: made again for the new document
        self._tap_box: list[list[bytes] | None] | None = None
        self._pdoc: Doc[Any] | None = None
        self._roots: tuple[Map[Any], Map[Any], Array[Any]] | None = None
        self._raw_maps: tuple[Any, Any] | None = None  # the Yrs handles of ``f`` and ``s``
        self._raw_texts: dict[str, Any] = {}
        self._texts: dict[str, Text] = {}
        if self._parts:
            with self._txn() as txn:
                for u in self._parts:
                    self._ydoc.apply_update(txn._txn, u)

    @property
    def doc(self) -> Doc[Any]:
        """The record's pycrdt document, made on first use: a record that is only merged and read (a bulk
        import) never needs it, and making one cost as much as applying the record's update. Until then
        the Yrs document is used directly (``_txn``)."""
        d = self._pdoc
        if d is None:
            d = self._pdoc = Doc(doc=self._ydoc)
        return d

    def _txn(self) -> Any:
        """A transaction on the document: pycrdt's once there is a pycrdt ``Doc`` (it may have observers
        and a transaction under way), else a bare Yrs one."""
        return self._pdoc.transaction() if self._pdoc is not None else RawTxn(self._ydoc)

    @property
    def _slots(self) -> Map[Any]:
        return self.roots()[0]

    @property
    def _sets(self) -> Map[Any]:
        return self.roots()[1]

    @property
    def _hist(self) -> Array[Any]:
        return self.roots()[2]

    def _handles(self, txn: Any) -> tuple[Any, Any]:
        """The Yrs handles of the slot and set maps, inside transaction ``txn`` (a Yrs transaction)."""
        h = self._raw_maps
        if h is None:
            if self._roots is not None:
                h = (self._roots[0].integrated, self._roots[1].integrated)
            else:
                ydoc = self._ydoc
                h = (ydoc.get_or_insert_map(txn, "f"), ydoc.get_or_insert_map(txn, "s"))
            self._raw_maps = h
        return h

    @contextlib.contextmanager
    def _capturing(self) -> Iterator[None]:
        """Collect the updates of the transactions run inside, into ``_captured`` and ``_parts``.

        Subscribed only for that time: a lasting subscription is held by the Rust side and keeps the
        document (and this object) alive for ever, so records evicted from the cache were never freed
        (3000 records merged through a 10-record cache kept all 3000 in memory).
        """
        sub = observe(self.doc, self._on_txn)
        try:
            yield
        finally:
            self.doc.unobserve(sub)

    def _on_txn(self, event: TransactionEvent) -> None:
        update = event.update
        if update == _EMPTY_UPDATE:
            return
        self._captured.append(update)
        self._parts.append(update)
        self._tail_bytes += len(update)

    def _fold_parts(self) -> None:
        """Replace ``_parts`` by the document's state once the new parts outweigh the first (or are many).

        Only called when the document holds nothing pending (after a write, or after ``apply`` put aside
        what it could not integrate). Encoding the document is ~30 times faster than ``merge_updates`` of
        its parts (3 ms against 97 for 3000 writes), and the size rule keeps the cost per byte constant:
        merging every 64 parts re-encoded a large document every 64 writes. The count rule only bounds
        the number of small parts: at 1024 it re-encoded a record with a long history every 1024 local
        writes, 3 us a write at 3000 writes.
        """
        n = len(self._parts)
        if n > 4096 or (n > 64 and self._tail_bytes > len(self._parts[0])):
            self._parts = [self.full_update()]
            self._tail_bytes = 0

    # -- reading -------------------------------------------------------------------------------------------

    def _read(self, shared: Map[Any] | Array[Any]) -> Any:
        """A root map's or array's content as plain JSON values, in one call.

        Iterating a pycrdt Map opens a transaction per key: reading records that way was the largest cost
        of a merge. ``to_json`` reads everything at once (our values are all JSON strings).
        """
        try:
            with self.doc.transaction() as txn:
                return orjson.loads(shared.integrated.to_json(txn._txn))
        except Exception:  # content a peer put there that has no JSON form: read it the slow way
            try:
                return dict(shared.items()) if isinstance(shared, Map) else list(shared)
            except KeyError as e:  # Yrs lists an entry it cannot return (a corrupted update)
                raise ValueError(f"unreadable entry {e}") from None

    def _read_content(self) -> None:
        """Fill whichever of the slot, set and text caches is empty, in one transaction.

        A transaction costs about as much as reading a small map: a merge read slots, sets and texts in
        six of them, reading sets twice.
        """
        texts = self._text_names()
        with self._txn() as txn:
            t = txn._txn
            slots, sets = self._handles(t)
            try:
                # key by key: three times faster than ``to_json`` (which escapes every JSON string in it,
                # for ``orjson.loads`` to unescape them again). A value that is not a str (a peer's nested
                # type, a number) comes back as what it is, and no check accepts it
                if self._slot_raw is None:
                    get = slots.get
                    self._slot_raw = {k: get(t, k) for k in slots.keys(t)}
                if self._set_raw is None:
                    get = sets.get
                    self._set_raw = {k: get(t, k) for k in sets.keys(t)}
            except Exception as e:  # Yrs lists an entry it cannot return (a corrupted update)
                raise ValueError(f"unreadable entry {e!r}") from None
            if self._text_now is None:
                self._text_now = {n: self._raw_text(t, n).get_string(t) for n in texts}

    def _text_names(self) -> list[str]:
        return [n for n, f in self.collection.fields.items() if f.merge == "text"]

    def raw_slots(self) -> dict[str, Any]:
        """The slots as stored: key -> the slot's JSON string (as the document holds it)."""
        if self._slot_raw is None:
            self._read_content()
        assert self._slot_raw is not None
        return self._slot_raw

    def slots(self) -> dict[str, Slot]:
        if self._parsed is None:
            self._parsed = {k: _parse_slot(k, v) for k, v in self.raw_slots().items()}
        return self._parsed

    def _set_map(self) -> dict[str, SetEntry]:
        if self._set_parsed is None:
            if self._set_raw is None:
                self._read_content()
            assert self._set_raw is not None
            self._set_parsed = {k: _parse_set(k, v) for k, v in self._set_raw.items()}
        return self._set_parsed

    def set_entries(self) -> list[SetEntry]:
        return list(self._set_map().values())

    def texts(self) -> dict[str, str]:
        """The value of every text field."""
        if self._text_now is None:
            self._read_content()
        assert self._text_now is not None
        return self._text_now

    def text(self, name: str) -> Text:
        text = self._texts.get(name)
        if text is None:  # Doc.get costs a transaction: keep the handle
            text = self._texts[name] = self.doc.get(f"t:{name}", type=Text)
        return text

    def _raw_text(self, txn: Any, name: str) -> Any:
        """The Yrs handle of a text field, inside transaction ``txn`` (a Yrs transaction)."""
        h = self._raw_texts.get(name)
        if h is None:
            text = self._texts.get(name)
            h = self._raw_texts[name] = text.integrated if text is not None \
                else self._ydoc.get_or_insert_text(txn, f"t:{name}")
        return h

    def state(self) -> RecordState:
        if self._state is None:
            self._state = compute_state(self.collection, self.id, self.slots().values(), self.set_entries(),
                                        self.texts())
        return self._state

    def vector(self) -> dict[str, int]:
        return dict(self.state().vector)

    def history(self) -> list[HistoryEntry]:
        out = []
        for raw in self._read(self._hist):
            try:
                p = orjson.loads(raw)
                out.append(HistoryEntry(p["f"], p["o"], p.get("v"), p["d"], p["u"], p["t"]))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
        out.sort(key=lambda h: (h.time, h.device))
        return out

    def full_update(self) -> bytes:
        with self._txn() as txn:
            return bytes(self._ydoc.get_update(txn._txn, b"\x00"))

    def parts(self) -> list[bytes]:
        """The updates the document is made of (a copy of the list): enough to rebuild it, e.g. to undo an
        update that turned out to be refused, without encoding the whole state as ``full_update`` does."""
        return list(self._parts)

    def roots(self) -> tuple[Map[Any], Map[Any], Array[Any]]:
        """The slot map ``f``, the set map ``s`` and the history array ``h`` (``Doc.get`` costs a
        transaction each time: these are the handles the document keeps)."""
        r = self._roots
        if r is None:
            with self.doc.transaction():  # one transaction for the three roots, not one each
                r = self._roots = (self.doc.get("f", type=Map), self.doc.get("s", type=Map),
                                   self.doc.get("h", type=Array))
        return r

    def state_vector(self) -> bytes:
        with self._txn() as txn:
            return bytes(self._ydoc.get_state(txn._txn))

    def diff(self, state_vector: bytes | None) -> bytes:
        with self._txn() as txn:
            return bytes(self._ydoc.get_update(txn._txn, state_vector or b"\x00"))

    # -- writing -------------------------------------------------------------------------------------------

    def _write(self, body: Callable[[], None]) -> bytes:
        self._captured.clear()
        self._log_buf = []
        with self._capturing(), self.doc.transaction(origin="local") as txn:
            body()
            # history entries go in at the front, in the order logged: ``history()`` sorts them by time
            # anyway, and appending to a long array cost Yrs a walk over every entry (40 us at 3000 writes)
            hist = self._hist.integrated
            for i, entry in enumerate(self._log_buf):
                hist.insert(txn._txn, i, entry)
        self._state = None
        self._fold_parts()
        out = self._captured[:]
        self._captured.clear()
        if not out:
            return b""
        if len(out) == 1:
            return out[0]
        return merge_updates(*out)

    def _put_slot(self, name: str, value: Any, t: int, seen: Mapping[str, int]) -> None:
        key = f"{name}{SEP}{self.writer}"
        raw = orjson.dumps({"v": value, "t": t, "d": self.device, "u": self.user, "c": seen}).decode()
        self._slots[key] = raw
        self._wrote_slot(key, raw, Slot(name, self.writer, value, t, self.device, self.user, seen))

    def _wrote_slot(self, key: str, raw: str, slot: Slot) -> None:
        """Keep the slot caches in step with a slot just written (cheaper than reading it all again)."""
        if self._slot_raw is not None and self._parsed is not None:
            self._slot_raw[key] = raw
            self._parsed[key] = slot
        else:
            self._slot_raw = self._parsed = None

    def _log(self, name: str, op: str, value: Any, t: int) -> None:
        """Add a history entry (within a ``_write``)."""
        self._log_buf.append(orjson.dumps({"f": name, "o": op, "v": value, "d": self.device, "u": self.user,
                                           "t": t}).decode())

    def write(self, values: Mapping[str, Any], t: int, *, op: str = "set", full_seen: bool = False,
              alive: bool = False) -> bytes:
        """Write checked values (decoded Python values) at HLC time ``t``; return the Yjs update.

        ``full_seen`` is for resolve: the write covers every value of the record, so nothing it replaces
        stays a conflict. ``alive`` (for create) also marks the record as not deleted, so a record with no
        field set still exists.
        """
        state = self.state()
        seen = dict(state.vector)
        if full_seen:
            for s in self.slots().values():
                seen[s.writer] = max(seen.get(s.writer, 0), s.t)
        if not alive and values.keys() <= _registers(self.collection) \
                and type(self)._put_slot is RecordDoc._put_slot:
            out = self._write_registers(values, t, op, seen)
            if out and self._advances and state.exists and not state.deleted and not state.conflicts \
                    and t > state.updated:
                self._state = self._advanced(state, values, t)
            return out
        slots = self.slots()

        def body() -> None:
            if alive:
                self._put_slot(DELETED, False, t, seen)
            for name, value in values.items():
                f = self.collection.fields[name]
                if f.merge == "register":
                    enc = f.encode(value)
                    self._put_slot(name, enc, t, seen)
                    self._log(name, op, enc, t)
                elif f.merge == "text":
                    text = self.text(name)
                    old = str(text)
                    # pycrdt's Text counts UTF-8 bytes, not characters: "é" is 2, an emoji 4
                    for start, end, insert in text_edits(old, value):
                        at = len(old[:start].encode("utf-8"))
                        if end > start:
                            del text[at:at + len(old[start:end].encode("utf-8"))]
                        if insert:
                            text.insert(at, insert)
                    self._text_now = None
                    self._put_slot(name, None, t, seen)
                    self._log(name, "text", value, t)
                elif f.merge == "counter":
                    delta = value - state.fields.get(name, 0)
                    own = slots.get(f"{name}{SEP}{self.writer}")
                    total = (int(own.value or 0) if own else 0) + delta
                    self._put_slot(name, total, t, seen)
                    self._log(name, "inc", delta, t)
                else:
                    self._write_set(name, frozenset(value), state.fields.get(name, frozenset()), t, seen)

        out = self._write(body)
        if out and self._advances and not alive and state.exists and not state.deleted and not state.conflicts \
                and t > state.updated and all(self.collection.fields[n].merge in ("register", "counter")
                                              for n in values):
            self._state = self._advanced(state, values, t)
        return out

    def _write_registers(self, values: Mapping[str, Any], t: int, op: str, seen: Mapping[str, int]) -> bytes:
        """``write`` of plain (register) fields: what ``_write`` with ``_put_slot`` and ``_log`` does, in one
        Yrs transaction on the bare document (pycrdt's ``Transaction`` wrapper and the nested ones of
        ``Map.__setitem__`` were a fifth of an ``update()``). Nothing in here may open a pycrdt transaction."""
        fields = self.collection.fields
        writer, device, user = self.writer, self.device, self.user
        slots: list[tuple[str, str, Slot]] = []
        logged: list[str] = []
        for name, value in values.items():
            enc = fields[name].encode(value)
            raw = orjson.dumps({"v": enc, "t": t, "d": device, "u": user, "c": seen}).decode()
            slots.append((f"{name}{SEP}{writer}", raw, Slot(name, writer, enc, t, device, user, seen)))
            logged.append(orjson.dumps({"f": name, "o": op, "v": enc, "d": device, "u": user, "t": t}).decode())
        updates: list[bytes] = []
        box = self._tap()
        box[0] = updates
        try:
            ydoc = self._ydoc
            txn = ydoc.create_transaction()
            try:
                slot_map = self._handles(txn)[0]
                roots = self._roots
                hist = roots[2].integrated if roots is not None else ydoc.get_or_insert_array(txn, "h")
                for key, raw, _ in slots:
                    slot_map.insert(txn, key, raw)
                for i, entry in enumerate(logged):  # at the front: see ``_write``
                    hist.insert(txn, i, entry)
                txn.commit()
            finally:
                txn.drop()
        finally:
            box[0] = None
        for key, raw, slot in slots:
            self._wrote_slot(key, raw, slot)
        self._state = None
        out = [u for u in updates if u != _EMPTY_UPDATE]
        for u in out:
            self._parts.append(u)
            self._tail_bytes += len(u)
        self._fold_parts()
        if not out:
            return b""
        return out[0] if len(out) == 1 else merge_updates(*out)

    def _tap(self) -> list[list[bytes] | None]:
        """A lasting subscription to the document's updates for ``_write_registers``: a box whose list, when
        one is put in it, receives the update of each transaction (subscribing anew cost every write two
        calls into Rust). The callback holds the box only, never this object: no cycle through Rust."""
        if self._tap_box is None:
            box: list[list[bytes] | None] = [None]

            def tap(event: Any) -> None:
                sink = box[0]
                if sink is not None:
                    sink.append(event.update)

            self._tap_sub = self._ydoc.observe(tap)
            self._tap_box = box
        return self._tap_box

    def _advanced(self, state: RecordState, values: Mapping[str, Any], t: int) -> RecordState:
        """The state after this device wrote ``values`` (register or counter fields) at ``t``, from the state
        before, without recomputing it from every slot.

        Only for a record that exists with no conflict and no delete in effect (so no delete is live), and
        a ``t`` later than every slot: the new slots saw every slot (their context is the record's vector),
        so each is its field's only live value and its latest write; a counter's value becomes the total
        written. Exactly what ``compute_state`` would give, at a fraction of the cost.
        """
        fields = dict(state.fields)
        changed_by = dict(state.changed_by)
        by = Candidate(None, self.device, self.user, t)
        for name, value in values.items():
            f = self.collection.fields[name]
            if f.merge == "register":
                if type(f).encode is Field.encode:  # the JSON form is the checked value: it decodes to itself
                    fields[name] = value
                    changed_by[name] = by
                    continue
                enc = f.encode(value)
                try:
                    fields[name] = f.decode(enc)
                except Invalid:
                    fields[name] = enc
            else:
                fields[name] = value
            changed_by[name] = by
        vector = dict(state.vector)
        vector[self.writer] = t
        return RecordState(state.collection, state.id, fields, False, (), vector, True, t, changed_by)

    def _write_set(self, name: str, new: frozenset[Any], old: frozenset[Any], t: int,
                   seen: Mapping[str, int]) -> None:
        of = self.collection.fields[name].of  # type: ignore[attr-defined]
        entries: dict[str, list[SetEntry]] = {}
        for e in self.set_entries():
            if e.field == name:
                entries.setdefault(e.element, []).append(e)
        for value in sorted(new - old, key=repr):
            element = orjson.dumps(of.encode(value)).decode()
            mine = next((e for e in entries.get(element, []) if e.writer == self.writer), None)
            adds = (mine.adds if mine else 0) + 1
            removed = dict(mine.removed) if mine else {}
            self._sets[f"{name}{SEP}{element}{SEP}{self.writer}"] = orjson.dumps({"a": adds, "r": removed}).decode()
            self._log(name, "add", of.encode(value), t)
        for value in sorted(old - new, key=repr):
            element = orjson.dumps(of.encode(value)).decode()
            es = entries.get(element, [])
            mine = next((e for e in es if e.writer == self.writer), None)
            removed = dict(mine.removed) if mine else {}
            for e in es:
                removed[e.writer] = max(removed.get(e.writer, 0), e.adds)
            self._sets[f"{name}{SEP}{element}{SEP}{self.writer}"] = orjson.dumps(
                {"a": mine.adds if mine else 0, "r": removed}).decode()
            self._log(name, "remove", of.encode(value), t)
        self._set_raw = self._set_parsed = None
        self._put_slot(name, None, t, seen)

    def set_deleted(self, deleted: bool, t: int, *, full_seen: bool = True) -> bytes:
        """Delete (or restore) the record at time ``t``. A delete covers every write it has seen."""
        seen = dict(self.state().vector)

        def body() -> None:
            self._put_slot(DELETED, deleted, t, seen)
            self._log("deleted", "delete" if deleted else "restore", deleted, t)

        return self._write(body)

    # -- merging -------------------------------------------------------------------------------------------

    @staticmethod
    def _integrated(doc: Doc[Any], update: bytes) -> bool:
        """True when every struct of ``update`` is in ``doc`` (none waits for a missing one)."""
        rest = get_update(update, doc.get_state())
        return rest[:1] == b"\x00"  # the diff's first varuint: how many clients still have structs

    def _fits(self, update: bytes) -> bool:
        """Whether ``update`` would be integrated, tried on a copy of the document."""
        probe: Doc[Any] = Doc()
        probe.apply_update(self.full_update())
        probe.apply_update(update)
        return self._integrated(probe, update)

    def apply(self, update: bytes) -> bytes:
        """Apply a remote update; return the part that was new to this document (b"" if none).

        An update that builds on one not received yet cannot be integrated. Yrs then keeps it pending,
        but (pycrdt 0.14) its map entries show up in reads all the same, and it does not always retry it
        when the missing update arrives (deltas applied in reverse order lost all but the first). Shown,
        such a slot would wrongly count as seen by the next local write, which would then silently beat
        the writes it builds on. So such an update is kept out of the document whole: it goes to ``held``
        (the replica stores it), the document is rebuilt from its integrated updates, and held updates are
        tried again, on copies, whenever an update arrives (``_retry_held``).
        """
        if not self._parts and not self.held:
            return self._apply_fresh(update)
        self._captured.clear()
        try:
            if not self._take(update):
                self._hold(update)
            self._retry_held()
        except ValueError as e:
            raise MalformedUpdate(f"{self.collection.name}/{self.id}: {e}") from None
        return self._new_part()

    def _take(self, update: bytes) -> bool:
        """Apply ``update`` if it is integrated whole; else undo it and return False.

        Undone whole: Yrs puts the entries of an update after a gap inside it (``merge(u2, u4)`` without
        ``u3``) into the map all the same (its state vector stops at the gap), and the transaction's update
        carries them, so nothing of what the apply captured is kept and the document is rebuilt from its
        integrated updates.
        """
        kept, tail, captured = len(self._parts), self._tail_bytes, len(self._captured)
        self._apply_capturing(update)
        if get_update(update, self.state_vector())[:1] == b"\x00":  # integrated (see ``_integrated``)
            return True
        del self._parts[kept:]
        del self._captured[captured:]
        self._tail_bytes = tail
        self._build(self._ydoc.client_id())
        return False

    def _hold(self, update: bytes) -> None:
        if update not in self.held:  # a peer may send it again
            self.held.append(update)

    def _new_part(self) -> bytes:
        """What the updates applied since ``_captured`` was cleared added to the document (b"" if none)."""
        out = list(self._captured)
        self._captured.clear()
        if not out:
            return b""
        self._changed_remotely()
        self._fold_parts()
        return out[0] if len(out) == 1 else merge_updates(*out)

    def _retry_held(self) -> None:
        """Let in the held updates that fit now: each one that fits alone, and then those that only fit
        together (``merge(u2, u4)`` and ``u3`` once ``u1`` is in), until none does."""
        while self.held:
            fit = next((h for h in self.held if self._fits(h)), None)
            if fit is not None:
                self._apply_capturing(fit)
                self.held.remove(fit)
                continue
            if len(self.held) < 2:
                return
            together = self._fitting_together()
            if not together:
                return
            self._apply_capturing(merge_updates(*together))
            for h in together:
                self.held.remove(h)

    def _fitting_together(self) -> list[bytes]:
        """The largest set of held updates (two or more) that is integrated whole when applied together, or
        [] if none. Tried on copies of the document: all of them at once, then only those that went in
        whole, until every one tried goes in (one that needs a part of an update still waiting drops out,
        and so may another that needed it)."""
        together = list(self.held)
        state = self.full_update()
        while len(together) >= 2:
            probe: Doc[Any] = Doc()
            probe.apply_update(state)
            probe.apply_update(merge_updates(*together))
            fits = [h for h in together if self._integrated(probe, h)]
            if len(fits) == len(together):
                return together
            together = fits
        return []

    def _apply_capturing(self, update: bytes) -> None:
        """Apply ``update``, collecting what it changed into ``_captured`` (see ``_capturing``). On a
        document no pycrdt ``Doc`` wraps yet, with a bare Yrs subscription and transaction: a merge into a
        known record then needs no pycrdt ``Doc`` either."""
        if self._pdoc is not None:
            with self._capturing():
                self.doc.apply_update(update)
            return
        sub = self._ydoc.observe(self._on_txn)
        try:
            with self._txn() as txn:
                self._ydoc.apply_update(txn._txn, update)
        finally:
            sub.drop()

    def apply_many(self, updates: list[bytes]) -> bytes:
        """``apply`` for several updates of the record: one apply of them merged, or, on a document that
        holds nothing yet, each applied in one transaction (merging them first cost more than applying them
        all). If some of them wait for an update not received, they are applied one at a time instead,
        so that only those are held (merged, the gap would hold back all of them). Returns the part that
        was new to this document (b"" if none)."""
        if len(updates) == 1:
            return self.apply(updates[0])
        if not self._parts and not self.held:
            new = self._apply_fresh_many(updates)
            if new is not None:
                return new
        self._captured.clear()
        try:
            if not self._take(merge_updates(*updates)):
                for u in updates:
                    if not self._take(u):
                        self._hold(u)
            self._retry_held()
        except ValueError as e:
            raise MalformedUpdate(f"{self.collection.name}/{self.id}: {e}") from None
        return self._new_part()

    def _apply_fresh_many(self, updates: list[bytes]) -> bytes | None:
        """``apply_many`` on an empty document, when every update is integrated: the new part is then the
        document's whole state. None (and the document left empty) otherwise: some update builds on one
        that is missing, or arrived before one it builds on (Yrs does not always integrate those later in
        the same transaction), or is malformed; ``apply`` of them merged sorts those out."""
        try:
            with self._txn() as txn:
                t = txn._txn
                for u in updates:
                    self._ydoc.apply_update(t, u)
            state = self.state_vector()
            integrated = all(get_update(u, state)[:1] == b"\x00" for u in updates)
        except ValueError:
            integrated = False
        if not integrated or state == b"\x00":
            self._build(self._ydoc.client_id())
            return None
        self._parts = [self.full_update()]
        self._tail_bytes = 0
        self._changed_remotely()
        return self._parts[0]

    def _apply_fresh(self, update: bytes) -> bytes:
        """``apply`` to a document that holds nothing yet (a record new to this replica): when all of
        ``update`` is integrated, what is new is ``update`` itself, so it needs no subscription to capture
        it and no parts to fold. Otherwise it is held, as ``apply`` holds it."""
        try:
            with self._txn() as txn:
                self._ydoc.apply_update(txn._txn, update)
            state = self.state_vector()
            integrated = get_update(update, state)[:1] == b"\x00"
        except ValueError as e:
            raise MalformedUpdate(f"{self.collection.name}/{self.id}: {e}") from None
        if not integrated:
            self.held.append(update)
            self._build(self._ydoc.client_id())
            return b""
        if state == b"\x00":  # nothing integrated (an empty update, or deletes of unknown items)
            return b""
        self._parts = [update]
        self._tail_bytes = 0
        self._changed_remotely()
        return update

    def apply_traced(self, update: bytes) -> Traced | None:
        """``apply``, reporting what the update did (``Traced``): the relay checks each change by that.

        One bare Yrs transaction, watched by lasting subscriptions (``model/trace.py``). None, and nothing
        applied, where that does not hold: a document a pycrdt ``Doc`` wraps (its observers expect pycrdt
        transactions) or one with held updates (``apply`` retries them): use ``apply`` and observe it then.
        """
        if self._pdoc is not None or self.held:
            return None
        tracer = self._tracer
        ydoc = self._ydoc
        if tracer is None:
            with RawTxn(ydoc) as txn:
                slots, sets = self._handles(txn._txn)
                hist = ydoc.get_or_insert_array(txn._txn, "h")
            tracer = self._tracer = Tracer(ydoc, slots, sets, hist)
        traced = tracer.arm()
        try:
            with RawTxn(ydoc) as txn:
                ydoc.apply_update(txn._txn, update)
        except ValueError as e:
            raise MalformedUpdate(f"{self.collection.name}/{self.id}: {e}") from None
        finally:
            tracer.disarm()
        if get_update(update, traced.after)[:1] != b"\x00":  # not integrated (see ``_integrated``)
            self.held.append(update)
            self._build(ydoc.client_id())  # without what is pending
            return Traced(held=True)
        new = traced.new
        if new:
            self._parts.append(new)
            self._tail_bytes += len(new)
            self._changed_remotely()
            self._fold_parts()
        return traced

    def _changed_remotely(self) -> None:
        """Drop the content caches after a remote update; keep what they held as the ``check`` baseline."""
        if self._base is None and self._slot_raw is not None and self._parsed is not None:
            sets = (self._set_raw, self._set_parsed) if self._set_raw is not None and self._set_parsed is not None \
                else (None, None)
            self._base = (self._slot_raw, self._parsed, *sets)
        self._state = None
        self._slot_raw = self._parsed = None
        self._set_raw = self._set_parsed = None
        self._text_now = None

    def check_keys(self, slot_keys: Iterable[str], set_keys: Iterable[str]) -> dict[str, Slot] | None:
        """Check only the slots and set entries under these keys (those an update just set; the rest was
        checked before); raise ``RemoteValidationError``. The relay checks each change this way, at a cost
        that does not grow with the record. Keys no longer present (deleted) are skipped.

        Returns the slots it read, parsed, by key (for further checks without reading them again); None
        for a document kind with its own ``check`` (another layout), which is then checked whole."""
        if type(self).check is not RecordDoc.check:
            self.check()
            return None
        try:
            slots, sets = self._get_many(slot_keys, set_keys)
        except Exception as e:  # Yrs lists an entry it cannot return (a corrupted update)
            raise RemoteValidationError(self.collection.name, self.id, None, f"corrupted document: {e!r}") from None
        return self.check_values(slots, sets)

    def check_values(self, slots: Mapping[str, Any], sets: Mapping[str, Any]) -> dict[str, Slot] | None:
        """``check_keys`` of values already read (under the keys they were read from): the values an
        update left in the slot and set maps, as ``apply_traced`` reports them."""
        if type(self).check is not RecordDoc.check:
            self.check()
            return None
        check_slot = self._check_slot
        parsed = {key: check_slot(key, raw) for key, raw in slots.items()}
        for key, raw in sets.items():
            self._check_set(key, raw)
        return parsed

    def _get_many(self, slot_keys: Iterable[str], set_keys: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The values present under these keys of the slot map and the set map, read in one transaction
        (``Map.get`` opens two per key). Nested shared types come back as Yrs objects, which no check
        accepts."""
        with self._txn() as txn:
            t = txn._txn
            out = []
            for shared, keys in zip(self._handles(t), (slot_keys, set_keys), strict=True):
                got: dict[str, Any] = {}
                for key in keys:
                    if key not in got and shared.has(t, key):
                        got[key] = shared.get(t, key)
                out.append(got)
        return out[0], out[1]

    def check(self) -> None:
        """Check the slots and set entries against the schema; raise ``RemoteValidationError``.

        Only the entries that differ from the content before the updates applied since the last check
        (all of it valid) are checked: a merge into a large record checks what the merge brought.
        """
        coll = self.collection
        base = self._base
        try:
            if self._slot_raw is None or self._set_raw is None:
                self._read_content()
            slots, sets = self._slot_raw, self._set_raw
            assert slots is not None and sets is not None
        except ValueError as e:
            raise RemoteValidationError(coll.name, self.id, None, f"corrupted document: {e}") from None
        check_slot, check_set = self._check_slot, self._check_set
        parsed: dict[str, Slot]
        set_parsed: dict[str, SetEntry]
        if base is None:  # nothing checked before (a record new here): every entry
            # every entry at once (see ``checks.py``), unless a subclass checks them its own way
            parsed = check_slots(coll, slots, check_slot) if type(self)._check_slot is RecordDoc._check_slot \
                else {key: check_slot(key, raw) for key, raw in slots.items()}
            set_parsed = check_set_entries(coll, sets, check_set) \
                if sets and type(self)._check_set is RecordDoc._check_set \
                else {key: check_set(key, raw) for key, raw in sets.items()}
        else:
            old_raw, old_parsed = base[0], base[1]
            parsed = {}
            for key, raw in slots.items():
                parsed[key] = old_parsed[key] if old_raw.get(key, _MISSING) == raw else check_slot(key, raw)
            old_set_raw = base[2] if base[2] is not None else {}
            old_set_parsed = base[3] if base[3] is not None else {}
            set_parsed = {}
            for key, raw in sets.items():
                set_parsed[key] = old_set_parsed[key] if old_set_raw.get(key, _MISSING) == raw \
                    else check_set(key, raw)
        # checked: state() need not parse them again, and the next check starts from here
        self._parsed, self._set_parsed = parsed, set_parsed
        self._base = None

    def _check_slot(self, key: str, raw: Any) -> Slot:
        coll = self.collection
        try:
            s = _parse_slot(key, raw)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as e:
            raise RemoteValidationError(coll.name, self.id, None, f"malformed slot: {e}") from None
        name = s.field
        if name == DELETED:
            if not isinstance(s.value, bool):
                raise RemoteValidationError(coll.name, self.id, "deleted", "deleted must be a bool")
            return s
        f = coll.fields.get(name)
        if f is None:
            raise RemoteValidationError(coll.name, self.id, name, "unknown field")
        try:
            merge = f.merge
            if merge == "register":
                f.decode(s.value)
            elif merge == "counter":
                f.check(s.value)
            elif s.value is not None:
                raise Invalid("markers hold no value")
        except Invalid as e:
            raise RemoteValidationError(coll.name, self.id, s.field, str(e)) from None
        return s

    def _check_set(self, key: str, raw: Any) -> SetEntry:
        coll = self.collection
        try:
            entry = _parse_set(key, raw)
            f = coll.fields.get(entry.field)
            if f is None or f.merge != "set":
                raise Invalid("unknown set field")
            f.of.decode(orjson.loads(entry.element))  # type: ignore[attr-defined]
        except (Invalid, ValueError, KeyError, TypeError, orjson.JSONDecodeError) as e2:
            raise RemoteValidationError(coll.name, self.id, None, f"bad set entry: {e2}") from None
        return entry

    def max_time(self) -> int:
        if self._state is not None:  # the latest slot time: what ``updated`` is
            return self._state.updated
        return max((s.t for s in self.slots().values()), default=0)

    def writers(self) -> set[str]:
        return {s.writer for s in self.slots().values()}
