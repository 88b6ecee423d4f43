"""One record as a Yjs document: building it from its updates, and reading it. No I/O.

The layers above add, each in its module: checking the content against the schema (``checks.py``),
merging remote updates (``merging.py``) and a device's writes (``record.py``, ``RecordDoc``).

Layout of the document (root types merge field by field, so two devices creating the same record id
offline merge instead of one replacing the other):

- ``f`` (Map): slots, ``field\\x1fwriter -> JSON {v, t, d, u, c}`` (see ``slots.py``). Text, counter and set
  fields keep a slot too, as a marker of who touched them when (and, for counters, the writer's total).
- ``s`` (Map): add-wins set entries, ``field\\x1felement-json\\x1fwriter -> JSON {a, r}``.
- ``t:<field>`` (Text): one per text field, merged character by character.
- ``h`` (Array): the history, one JSON entry per field change, for audit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from pycrdt import Array, Doc, Map, Text, TransactionEvent

from ..clock import MAX_TIME
from ..schema import Collection
from .layouts import record_mismatch
from .slots import SEP, Slot
from .state import HistoryEntry, RecordState, SetEntry, compute_state
from .trace import Tracer
from .yrs import RawTxn, YDoc, observe

__all__ = ["EMPTY_UPDATE", "MISSING", "BaseRecordDoc", "parse_set", "parse_slot"]

EMPTY_UPDATE = b"\x00\x00"
MISSING = object()


def parse_slot(key: str, raw: Any) -> Slot:
    name, _, writer = key.partition(SEP)
    if not name or not writer or not isinstance(raw, str):
        raise ValueError(f"bad slot key {key!r}")
    p = orjson.loads(raw)
    t, d, u, c = p["t"], p["d"], p["u"], p["c"]
    # written out rather than ``all(...)``: a merge parses every slot it brings (the generator was a fifth)
    if not (isinstance(t, int) and 0 < t < MAX_TIME and isinstance(d, str) and isinstance(u, str)
            and isinstance(c, dict)):
        raise ValueError(f"bad slot {key!r}")
    for v in c.values():
        if not isinstance(v, int) or not 0 <= v < MAX_TIME:
            raise ValueError(f"bad slot {key!r}")
    return Slot(name, writer, p.get("v"), t, d, u, c)


def parse_set(key: str, raw: Any) -> SetEntry:
    name, element, writer = key.split(SEP)
    p = orjson.loads(raw)
    a, r = p["a"], p["r"]
    if not (isinstance(a, int) and a >= 0 and isinstance(r, dict) and all(isinstance(v, int) for v in r.values())):
        raise ValueError(f"bad set entry {key!r}")
    return SetEntry(name, element, writer, a, r)


_REGISTERS: dict[int, tuple[Collection, frozenset[str]]] = {}

class BaseRecordDoc:
    """A record's Yjs document plus the device's identity, with a cached merged state: what the layers
    above (checks, merging, writes; ``RecordDoc`` is all of them) build on."""

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
        # bytes of the parts after the first: they are merged into it when they outgrow it
        self._tail_bytes = sum(map(len, self._parts[1:]))
        self._tracer: Tracer | None = None  # made by ``apply_traced``, for the document it was made on
        self._hist_len: int | None = None  # the history's length after the last ``apply_traced`` (None: unknown)
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
        self._hist_len = None
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
        if update == EMPTY_UPDATE:
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
            raw = self.raw_slots()
            try:
                self._parsed = {k: parse_slot(k, v) for k, v in raw.items()}
            except (ValueError, KeyError, TypeError) as e:
                # the other layout's content (a draft: a store switched strategies before that was refused)
                # says so, not ``KeyError: 't'``; merges refuse such entries, so nothing else is stored
                err = record_mismatch(self.collection.name, self.id, self.collection.strategy, raw.items())
                if err is not None:
                    raise err from None
                raise ValueError(f"{self.collection.name}/{self.id}: unreadable slot: {e!r}") from None
        return self._parsed

    def _set_map(self) -> dict[str, SetEntry]:
        if self._set_parsed is None:
            if self._set_raw is None:
                self._read_content()
            assert self._set_raw is not None
            self._set_parsed = {k: parse_set(k, v) for k, v in self._set_raw.items()}
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
                e = HistoryEntry(p["f"], p["o"], p.get("v"), p["d"], p["u"], p["t"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            # an entry no device writes (a peer's, merged directly: the relay checks them) is left out, not
            # sorted with the others (a str time beside int ones raised TypeError)
            if e.time.__class__ is int and isinstance(e.device, str) and isinstance(e.field, str):
                out.append(e)
        out.sort(key=lambda h: (h.time, h.device))
        return out

    def full_update(self) -> bytes:
        with self._txn() as txn:
            return bytes(self._ydoc.get_update(txn._txn, b"\x00"))

    def root_names(self) -> list[str]:
        """The names of the document's root types (``f``, ``s``, ``h`` and ``t:<text field>`` are ours)."""
        with self._txn() as txn:
            return list(self._ydoc.roots(txn._txn))

    def stored_size(self) -> int:
        """About how many bytes the document takes encoded (its parts and held updates; the parts after
        the first may repeat some of it): what a cache of records weighs it by."""
        parts, held = self._parts, self.held
        return (len(parts[0]) + self._tail_bytes if parts else 0) + (sum(map(len, held)) if held else 0)

    def size_bound(self) -> int:
        """An upper bound of the document's encoded size (``len(full_update())``), without encoding it: the
        bytes of its parts (the first is an encoding of the whole document at some point, each later one
        adds at most its own length)."""
        return len(self._parts[0]) + self._tail_bytes if self._parts else 0

    def encoded_size(self) -> int:
        """The document's exact encoded size, ``len(full_update())``. The encoding it makes becomes the
        document's only part, so ``size_bound`` is exact again until the next update: a caller that checks
        ``size_bound`` against a limit first encodes the document again only once the updates since add up
        to the room left under the limit (checked against the parts as they were, a record between half its
        limit and the limit was encoded whole at every change: 15-20 ms each at 8 MB). Only for a document
        that holds nothing pending (as ``_fold_parts``)."""
        whole = self.full_update()
        self._parts = [whole]
        self._tail_bytes = 0
        return len(whole)

    def parts_mark(self) -> tuple[list[bytes], int]:
        """The parts the document is made of now, as a mark for ``parts_at`` (``parts`` copies them: the
        relay marks every record it applies a change to, and the copy was a tenth of its own work). Parts
        are only appended, cut back to a length they had after the mark, or replaced by a new list: the
        marked list keeps its first ``n`` parts."""
        return self._parts, len(self._parts)

    @staticmethod
    def parts_at(mark: tuple[list[bytes], int]) -> list[bytes]:
        """The parts as they were at ``parts_mark``."""
        parts, n = mark
        return parts[:n]

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


    def max_time(self) -> int:
        if self._state is not None:  # the latest slot time: what ``updated`` is
            return self._state.updated
        return max((s.t for s in self.slots().values()), default=0)

    def writers(self) -> set[str]:
        return {s.writer for s in self.slots().values()}
