"""The relay's durable state on a byte store: the change log, per-record merged documents, validation.

Layout (only the ``ByteStore`` interface is used, so another byte store can replace SQLite):

- ``("log", seq)``: each accepted change, in the order the relay stored it: JSON
  ``[collection, record, device, change_id]`` then the Yjs update (the part new to the relay), length-prefixed;
- ``("dedup", device, change_id)``: the seq a change was stored at and a digest of its update (``seq digest``;
  entries written before hold the seq alone), so a resend after a lost ack is not stored twice (Yjs would
  ignore it anyway; this keeps the log free of empty entries), and another change under a used id (another
  store with the same device id) is refused instead of being taken for a resend;
- ``("recs", collection, record)``: the seq of the record's first change here, written once: the index of
  records a full resync walks (files written before kept the latest change's seq; either serves);
- ``("relay", "id" | "head" | "floor")``: the relay's identity (cursors belong to one relay log), the last
  seq stored, and the last seq compacted away (a cursor below it gets a full resync of its scope);
- ``("relay", "last", device)``: the id of the device's change stored last (``last_change``);
- ``("relay", "device", device)``: the user a device id belongs to (a token may not speak for another
  user's device);
- ``snap`` / ``upd`` / ``rmeta``: each record's merged document, kept by ``RecordDocs`` (snapshots +
  compaction), so a full resync sends one update per record however long its history.

``stage`` validates and applies one device's changes into a batch; the caller commits batches (grouped)
off the event loop and calls ``committed`` after.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..clock import hlc_pack
from ..codec import Reader, varuint_bytes
from ..errors import MalformedUpdate, RemoteValidationError
from ..model.drafts import SERVER_WRITER, DraftRecordDoc
from ..model.layouts import OTHER_LAYOUT, layout_of, layout_strategies
from ..model.merging import merged
from ..model.strategies import new_record_doc
from ..model.trace import client_start, scan_update
from ..protocol.events import Change, Item, Rejection
from ..protocol.frames import MAX_REASON, MAX_RETURNS
from ..replica.docs import RecordDocs
from ..replica.rows import decode_value, encode_value
from ..schema import Schema
from ..store.base import Batch, ByteStore
from .auth import Grant
from .checks import (
    MAX_AHEAD_MS,
    Refused,
    Waits,
    apply_observed,
    check_claims,
    check_own,
    check_roots,
    is_own_writer,
    merge_limits,
    refuse,
    refuse_over_limits,
    waits_for,
)
from .clients import ClientBindings, decode_sv, missing_clients, sv_clients, sv_is_empty, update_clients
from .drafts import check_draft_keys, replay_arrived

__all__ = ["Accepted", "LogGap", "Outcome", "RelayLog", "is_own_writer"]

log = logging.getLogger("crdtsync.relay")

_EMPTY_UPDATE = b"\x00\x00"
_CONTROL = re.compile(r"[\x00-\x1f]")
#: the held changes whose holding was logged at INFO, remembered (oldest forgotten first) so that the same
#: change held again, sent at every sync of its device, is logged at DEBUG only
_HELD_LOGGED_MAX = 4096
_NAMES_READ_MAX = 64 * 1024  # the largest held update whose missing writers are named (``_writers_missing``)


_ID_REUSED = ("another change of device {device!r} was stored under this change id: another installation uses "
              "this device id, or this store was restored from a backup; open a new store (a new device id) and "
              "re-enter the change")
_CLOCKS_REUSED = ("its Yjs items reuse clocks of items the relay already holds from device {device!r}: the store "
                  "that made it is a copy of another one of this device (restored from a backup taken before later "
                  "changes synced, or a second installation with this device id), and what it writes would be "
                  "taken for those items. Nothing of it was stored: open a new store (a new device id) and "
                  "re-enter the change")


def _digest(update: bytes) -> bytes:
    """What the dedup key keeps of a stored change's update: a resend sends the same bytes."""
    return hashlib.blake2b(update, digest_size=8).hexdigest().encode()


class LogGap(Exception):
    """Log entries after a cursor are gone: compacted away while a pull paged through them (``delta``)."""


@dataclass(slots=True)
class Accepted:
    """A stored change. ``prev``: when the change altered a field that a ``where`` limit looks at, the
    values those fields had before it (so a device that could see the record then is told it left). Treat
    it as immutable (not frozen: the relay makes one per change, and a frozen one cost four times as much
    to make)."""

    seq: int
    collection: str
    record: str
    device: str
    change_id: int
    update: bytes
    prev: Mapping[str, Any] | None = None


@dataclass
class Outcome:
    """What became of one push: stored (or stored before: ``ok``), rejected with a reason, or held (not
    stored, sent again later): behind a refused or held change of the same record, or building on changes
    the relay does not have yet. ``waits``: (change id, reason) of the latter (``Waits``), the changes
    held behind them have none of their own."""

    ok: list[int] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    accepted: list[Accepted] = field(default_factory=list)
    waits: list[tuple[int, str]] = field(default_factory=list)


def _reuses_clocks(update: bytes, heads: list[tuple[int, int]], before: bytes, new: bytes) -> bool:
    """Whether ``update``, whose clients' items start at ``heads`` (``scan_update``), holds items at clocks a
    document with state vector ``before`` has already. ``new``: the part of it new to the document. When all
    of a one-client update's items were new, that part starts as the update does (one client, the same
    number of items, id and first clock): a device's change, nearly always, and then nothing is decoded."""
    if before == b"\x00":
        return False
    if len(heads) == 1 and new.startswith(update[:heads[0][1]]):
        return False
    have = decode_sv(before)
    for pos, _ in heads:
        client, clock = client_start(update, pos)
        if clock < have.get(client, 0):
            return True
    return False


def _encode_entry(a: Accepted) -> bytes:
    head: list[Any] = [a.collection, a.record, a.device, a.change_id]
    if a.prev is not None:
        head.append(a.prev)
    raw = orjson.dumps(head)
    return b"".join((varuint_bytes(len(raw)), raw, varuint_bytes(len(a.update)), a.update))


def _decode_entry(seq: int, raw: bytes) -> Accepted:
    r = Reader(raw)
    c, rid, dev, cid, *prev = orjson.loads(r.bytes())
    return Accepted(seq, c, rid, dev, cid, r.bytes(), prev[0] if prev else None)


class RelayLog:
    """The relay's records and change log. ``keep`` is how many log entries compaction keeps; it drops the
    older ones once ``compact_slack`` of them have gathered (not a few after every write group)."""

    def __init__(self, store: ByteStore, schema: Schema, *, keep: int = 100_000, cache_size: int = 4096,
                 cache_bytes: int | None = None, wall: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
                 scope_fields: Mapping[str, frozenset[str]] | None = None, max_record: int | None = None) -> None:
        self.store = store
        self.schema = schema
        #: the largest a record's whole state may grow (bytes; None: no limit): a full resync, a record
        #: asked back or back in scope is sent whole, in one frame (the relay passes half its frame limit)
        self.max_record = max_record
        self.wall = wall  # ms since the epoch: how far ahead a change may be stamped (``check_claims``)
        # the fields ``where`` limits look at, per collection (``Tokens.scope_fields``)
        self.scope_fields = dict(scope_fields or {})
        self._merge_limits = {coll.name: merge_limits(coll) for coll in schema}
        self.keep = keep
        self.compact_slack = max(1, min(5000, keep // 10))
        raw = store.load(("relay", "id"))
        if raw is None:
            raw = os.urandom(8).hex().encode()
            store.save(("relay", "id"), raw)
        self.relay_id = raw.decode()
        self.head = int(store.load(("relay", "head")) or b"0")
        self.floor = int(store.load(("relay", "floor")) or b"0")
        # Compaction notes each device's highest change id whose dedup key it dropped (``("relay", "compacted",
        # device)``). A log compacted before that was noted (by an older relay) leaves every change id up to the
        # latest a device could have stamped then in doubt (``_may_be_compacted``): 0 when nothing was compacted
        tracked = store.load(("relay", "compaction-noted"))
        if tracked is None:
            tracked = str(hlc_pack(wall() + MAX_AHEAD_MS, 0xFFFF) if self.floor else 0).encode()
            store.save(("relay", "compaction-noted"), tracked)
        self.untracked_until = int(tracked)
        self._compacted: dict[str, int | None] = {}
        last = store.load_range(("log",), reverse=True, limit=1)
        if last:  # head is saved with every batch; this only guards against an older layout
            self.head = max(self.head, int(last[0][0][1]))
        # ``head`` counts staged changes as soon as the writer stages them; ``durable`` only those committed.
        # Readers hand out ``durable`` as a cursor: a cursor past an uncommitted change would skip it.
        self.durable = self.head

        def ids() -> int:
            return int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF or 1

        # The writer's documents (only ``stage`` touches them) and a separate read cache, refreshed after
        # each commit, so readers never see (or cache) a document half-way through a group commit. Each
        # holds up to ``cache_size`` records and ``cache_bytes`` of their encoded updates; the writer's
        # pins every record with staged changes until their commit (``committed``): a record evicted with
        # staged, uncommitted updates would be reloaded without them.
        self.docs = RecordDocs(store, schema, device="relay", user="relay", client_id=ids(), new_client_id=ids,
                               cache_size=cache_size, cache_bytes=cache_bytes)
        self.reader = RecordDocs(store, schema, device="relay", user="relay", client_id=ids(), new_client_id=ids,
                                 cache_size=cache_size, cache_bytes=cache_bytes)
        self._staged_dedup: dict[tuple[str, int], bytes] = {}  # (device, change id) -> the update's digest
        self._images: list[Accepted] = []  # drafts strategies: image entries staged with the last change
        self._stored_dedup: dict[tuple[str, int], bytes | None] = {}  # looked up for the group being staged
        # per device, the highest change id stored or staged (None: none); see ``_may_be_stored``
        self._dedup_top: dict[str, int | None] = {}
        self._held_logged: dict[tuple[str, int], None] = {}  # (device, change id), oldest first
        self.clients = ClientBindings(store)  # Yjs client ids bound to the devices writing under them
        #: records a full resync looks at between two turns of the event loop (``scope_chunks``)
        self.scope_chunk = 200

    # -- devices -------------------------------------------------------------------------------------------

    def device_owner(self, device: str) -> str | None:
        raw = self.store.load(("relay", "device", device))
        return None if raw is None else raw.decode()

    def bind_device(self, device: str, user: str) -> bool:
        """Tie a device id to the first user it connects as; False if it belongs to another user."""
        owner = self.device_owner(device)
        if owner is None:
            self.store.save(("relay", "device", device), user.encode())
            return True
        return owner == user

    # -- writing -------------------------------------------------------------------------------------------

    def _log_held(self, device: str, ch: Change, reason: str) -> None:
        """Log a held change at INFO the first time, at DEBUG when it is held again: a device sends its held
        changes at every sync, and a change that stays held (its writer's device never syncs) made a line
        at each (``_HELD_LOGGED_MAX`` of them are remembered)."""
        key = (device, ch.change_id)
        first = key not in self._held_logged
        if first:
            self._held_logged[key] = None
            if len(self._held_logged) > _HELD_LOGGED_MAX:
                del self._held_logged[next(iter(self._held_logged))]
        log.log(logging.INFO if first else logging.DEBUG, "holding back %s change %d of %s/%s%s: %s", device,
                ch.change_id, ch.collection, ch.record, "" if first else " again", reason)

    def stage(self, batch: Batch, device: str, grant: Grant, changes: Sequence[Change]) -> Outcome:
        """Validate and apply one push's changes, in order, staging the accepted ones into ``batch``."""
        out = Outcome()
        refused: set[tuple[str, str]] = set()
        # the latest time a change may be stamped with: the relay's clock plus ``MAX_AHEAD_MS`` (one reading of
        # the clock per push: a push takes milliseconds, the margin is days)
        latest = hlc_pack(self.wall() + MAX_AHEAD_MS, 0xFFFF)
        for ch in changes:
            key = (ch.collection, ch.record)
            if key in refused:
                out.held.append(ch.change_id)
                continue
            seen = self._seen(device, ch.change_id)
            if seen is not None:
                if seen and seen != _digest(ch.update):
                    # not a resend (the same bytes): another store wrote under this device's id
                    refused.add(key)
                    out.rejected.append(Rejection(ch.change_id, "invalid", _ID_REUSED.format(device=device)))
                    log.warning("refused %s change %d of %s/%s: another change was stored under its id", device,
                                ch.change_id, ch.collection, ch.record)
                else:
                    out.ok.append(ch.change_id)
                continue
            try:
                accepted = self._stage_one(batch, device, grant, ch, latest)
            except Waits as e:
                refused.add(key)  # the record's later changes build on this one: they wait too
                out.held.append(ch.change_id)
                out.waits.append((ch.change_id, e.reason[:MAX_REASON]))
                self._log_held(device, ch, e.reason)
                continue
            except Refused as e:
                refused.add(key)
                out.rejected.append(Rejection(ch.change_id, e.code, e.reason))
                log.info("rejected %s change %d of %s/%s: %s: %s", device, ch.change_id, ch.collection,
                         ch.record, e.code, e.reason)
                continue
            out.ok.append(ch.change_id)
            if accepted is not None:
                out.accepted.append(accepted)
                out.accepted.extend(self._images)  # drafts strategies: the relay's image, logged after the draft
                self._images.clear()
        last = next((a.change_id for a in reversed(out.accepted) if a.device == device), None)
        if last is not None:
            batch.save(("relay", "last", device), str(last).encode())
        return out

    def prefetch_seen(self, keys: Sequence[tuple[str, int]]) -> None:
        """Look up in one query whether these (device, change id) are stored already: the changes of a
        write group, about to be staged (one lookup per change was a store round trip each). Only ids that
        can be stored are looked up (``_may_be_stored``): a device's new changes need no query at all."""
        todo = [k for k in dict.fromkeys(keys) if self._may_be_stored(*k)]
        found = self.store.load_many([("dedup", d, cid) for d, cid in todo]) if todo else []
        self._stored_dedup = dict(zip(todo, found, strict=True))

    def _seen(self, device: str, change_id: int) -> bytes | None:
        """The digest of the update stored under this change id of ``device`` (b"" for an entry written
        without one), or None if none is stored."""
        key = (device, change_id)
        staged = self._staged_dedup.get(key)
        if staged is not None:
            return staged
        if key in self._stored_dedup:
            raw = self._stored_dedup[key]
        else:
            raw = self.store.load(("dedup", device, change_id)) if self._may_be_stored(device, change_id) else None
        if raw is None:
            return None
        _, _, digest = raw.partition(b" ")
        return digest

    def last_change(self, device: str) -> int:
        """The id of the change of ``device`` stored last (by arrival, not the highest: a store reinstalled
        with a clock behind the old one's numbers below it; 0 if none): its WELCOME's ``last``. Kept under
        ``("relay", "last", device)``, which compaction leaves; a log written before that key existed
        gives its highest dedup key. Reads the store (call it off the event loop)."""
        raw = self.store.load(("relay", "last", device))
        if raw is not None:
            return int(raw)
        self._may_be_stored(device, 0)
        return self._dedup_top.get(device) or 0

    def _compacted_top(self, device: str) -> int | None:
        """The highest id of a change of ``device`` whose dedup key compaction dropped (None: none)."""
        if device not in self._compacted:
            raw = self.store.load(("relay", "compacted", device))
            self._compacted[device] = None if raw is None else int(raw)
        return self._compacted[device]

    def _may_be_compacted(self, device: str, change_id: int) -> bool:
        """Whether a change of ``device`` that has no dedup key may still have been stored, its key compacted
        away: a change resent after a lost ack, not a new one. Not for an id above every compacted one of the
        device, unless an older relay compacted the log without noting them (then up to ``untracked_until``)."""
        top = self._compacted_top(device)
        return (top is not None and change_id <= top) or change_id <= self.untracked_until

    def _may_be_stored(self, device: str, change_id: int) -> bool:
        """False when no change of ``device`` with an id as high as ``change_id`` is stored: a device numbers
        its changes in increasing order, so its new ones are all above the highest id stored (read once per
        device, then kept up to date as changes are staged). Only a shortcut: ids below it are looked up."""
        if device not in self._dedup_top:
            last = self.store.load_range(("dedup", device), reverse=True, limit=1)
            self._dedup_top[device] = int(last[0][0][2]) if last else None
        top = self._dedup_top[device]
        return top is not None and change_id <= top

    def _stage_one(self, batch: Batch, device: str, grant: Grant, ch: Change, latest: int) -> Accepted | None:
        c, rid = ch.collection, ch.record
        if c not in self.schema.collections:
            raise Refused("gone", f"collection {c!r} does not exist on the relay")
        if not grant.can_write(c):
            raise Refused("forbidden", f"user {grant.user!r} may not write {c!r}")
        if not 0 < len(rid) <= 200 or _CONTROL.search(rid):
            raise Refused("invalid", "bad record id")
        lr = self.docs.get(c, rid)
        doc = lr.doc
        limited = grant.limited(c)
        if limited:
            before = doc.state()
            if before.exists and not grant.in_scope(c, before.fields):
                raise Refused("forbidden", f"{c}/{rid} is outside the records {grant.user!r} may write")
        watched = self.scope_fields.get(c)
        prev: dict[str, Any] | None = None
        if watched:
            was = doc.state()
            if was.exists:
                prev = {f: was.fields.get(f) for f in sorted(watched)}
        shape, strings, roots, heads = scan_update(ch.update)
        if shape is not None:
            raise Refused("invalid", f"{c}/{rid}: the update holds {shape}, which no record holds")
        saved = doc.parts_mark()  # applied in place (the common case is accepted); restored if refused
        try:
            try:
                traced = doc.apply_traced(ch.update, strings=strings)
                observed, complete = traced is None, True
                if traced is None:  # a document that cannot be traced: applied under observation
                    # read first: the content before is then the baseline of ``check`` below (if the document
                    # is rebuilt), which checks only what changed, not values stored under older rules
                    doc.slots()
                    doc.set_entries()
                    traced, complete = apply_observed(doc, ch.update)
                if traced.held:
                    # it builds on changes the relay does not have (made on a device that has not synced yet,
                    # which this device got from it directly): acknowledged, it would be lost with the
                    # relay's memory; so it is not stored, and the device keeps it and sends it again
                    raise waits_for("it builds on writes", self._writers_missing(c, rid, device, ch.update,
                                                                                 doc.state_vector()))
                if heads and _reuses_clocks(ch.update, heads, traced.before, traced.new) \
                        and not self._may_be_compacted(device, ch.change_id):
                    # a change the relay never stored (no dedup key, and none compacted away), whose items start
                    # below what the relay holds of their client: another copy of the store wrote those clocks
                    # first. Yrs would skip its items as known and apply its deletions to the other copy's
                    # items: its writes lost, others' wiped. (A resend after a lost ack has its dedup key, or
                    # had it compacted away: its items are the ones held.)
                    raise Refused("invalid", _CLOCKS_REUSED.format(device=device))
                new = traced.new
                if not new:
                    return None  # nothing new (already stored): acknowledged, nothing to log
                # traced: ``new`` is the transaction's own update, whose clients are those that moved
                moved = None if observed else update_clients(new)
                if moved is None:
                    moved = sv_clients(traced.before, traced.after)
                unbound = self._unbound_clients(c, rid, device, moved)
                # only what the change set is checked: the rest of the record was checked when it was stored
                read = None
                if not complete:
                    doc.check()
                elif observed:
                    read = doc.check_keys(traced.slots, traced.sets)
                else:
                    read = doc.check_values(traced.slot_values, traced.set_values)
                # the slot keys it set (all of them when it was not traced whole), for ``refuse_over_limits``
                touched = traced.slots if complete else list(doc.raw_slots())
                user = None if grant.anonymous else grant.user
                if isinstance(doc, DraftRecordDoc):  # lww-record / lww-patch: only own drafts (relay/drafts.py)
                    refuse(check_draft_keys(doc, traced.slots, lambda w: is_own_writer(w, device), device, user))
                    traced.slots = []
                check_own(doc, traced, device, user, read, latest)
                lr.vector = check_claims(doc, traced, read, latest, lr.vector)
                if observed or roots is None or roots:  # (an update read whole that names no other root: none)
                    check_roots(doc, None if observed else roots)
            except (MalformedUpdate, RemoteValidationError) as e:
                reason = str(e)
                if OTHER_LAYOUT in reason:  # the device's schema gives the collection another strategy
                    layout = layout_of(doc.collection.strategy)
                    advice = (f", the strategy of the relay's {c!r}: the device's schema must give it "
                              f"{' or '.join(map(repr, layout_strategies(layout)))}; fix() or retry() cannot help, "
                              "discard_record() drops the change")
                    if len(reason) + len(advice) > MAX_REASON:  # (a long record id, a long key in it)
                        reason = reason[:MAX_REASON - len(advice) - 1] + "…"
                    reason += advice
                raise Refused("invalid", reason) from None
            except Refused:
                raise
            except BaseException as e:
                # pycrdt can panic (PanicException derives from BaseException) on hostile updates
                if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
                    raise
                log.warning("update of %s/%s from %s could not be applied", c, rid, device, exc_info=True)
                raise Refused("invalid", f"the update could not be applied: {type(e).__name__}") from None
            limits = self._merge_limits[c]
            if limits:
                refuse_over_limits(doc, limits, touched, lambda: new_record_doc(
                    doc.collection, rid, writer=doc.writer, device=doc.device, user=doc.user, client_id=0,
                    updates=doc.parts_at(saved)))
            if self.max_record is not None and doc.size_bound() > self.max_record:
                size = doc.encoded_size()  # (exact only when the bound is over; it makes the bound exact again)
                if size > self.max_record:
                    raise Refused("invalid", f"{c}/{rid} would be {size} bytes, more than the relay sends in one "
                                             f"frame ({self.max_record}): split what it holds")
            if limited and not grant.in_scope(c, doc.state().fields):
                raise Refused("forbidden", f"the change puts {c}/{rid} outside the records {grant.user!r} may "
                                            "write")
            image = b""
            if isinstance(doc, DraftRecordDoc):  # the relay, as the drafts' server, replays in arrival order
                image, refusal = replay_arrived(doc)
                refuse(refusal)
        except BaseException:
            lr.doc = new_record_doc(doc.collection, rid, writer=doc.writer, device=doc.device, user=doc.user,
                                    client_id=doc.doc.client_id, updates=doc.parts_at(saved))
            lr.vector = None  # (it may hold the refused change's times)
            raise
        if prev is not None:
            now = doc.state().fields
            fields = doc.collection.fields
            # None: the change moved the record in or out of no one's scope; else kept, as JSON
            prev = None if all(now.get(f) == v for f, v in prev.items()) \
                else {n: encode_value(fields.get(n), v) for n, v in prev.items()}
        self.docs.append(batch, c, rid, new, lr=lr)
        self.docs.pin(c, rid)  # until ``committed`` (or ``abandon``)
        self.head += 1
        a = Accepted(self.head, c, rid, device, ch.change_id, new, prev)
        seq = str(a.seq).encode()
        batch.save(("log", a.seq), _encode_entry(a))
        digest = _digest(ch.update)
        batch.save(("dedup", device, ch.change_id), seq + b" " + digest)
        if sv_is_empty(traced.before):  # the record's first change here: it joins the index of records
            batch.save(("recs", c, rid), seq)
        batch.save(("relay", "head"), seq)
        self._staged_dedup[(device, ch.change_id)] = digest
        top = self._dedup_top.get(device)
        if top is None or ch.change_id > top:
            self._dedup_top[device] = ch.change_id
        for cid in unbound:
            self.clients.stage(batch, c, rid, cid, device, a.seq)
        if image:
            self._images.append(self._stage_image(batch, c, rid, image))
        return a

    def _stage_image(self, batch: Batch, c: str, rid: str, image: bytes) -> Accepted:
        """Log the relay's own update of a drafts record (its new image) right after the draft it answers.
        Written by ``#server``, so every device receives it, the draft's author too; no idempotency key."""
        self.docs.append(batch, c, rid, image)
        self.docs.pin(c, rid)
        self.head += 1
        a = Accepted(self.head, c, rid, SERVER_WRITER, 0, image)
        batch.save(("log", a.seq), _encode_entry(a))
        batch.save(("relay", "head"), str(self.head).encode())
        return a

    def _writers_missing(self, c: str, rid: str, device: str, update: bytes, sv: bytes) -> list[str]:
        """The devices (other than ``device``) whose writes to the record an update builds on and the relay
        lacks: the owners of the Yjs clients it needs (``missing_clients``) that are bound to one. A record
        no device has synced yet binds none: then none is known. Read in Python, on the event loop: an
        update over 64 KiB (a change is a few hundred bytes; 64 KiB take about 15 ms) is not read, and names
        none."""
        if len(update) > _NAMES_READ_MAX:
            return []
        owners = (self.clients.owner(c, rid, cid) for cid in missing_clients(update, sv))
        return sorted({o for o in owners if o is not None and o != device})

    def _unbound_clients(self, c: str, rid: str, device: str, clients: list[int]) -> list[int]:
        """Refuse items made under a Yjs client id bound to another device (``relay/clients.py``); return
        the client ids not bound yet (bound to ``device`` when the change is staged)."""
        unbound = []
        for cid in clients:
            owner = self.clients.owner(c, rid, cid)
            if owner is None:
                unbound.append(cid)
            elif owner != device:
                raise Refused("forbidden", f"writes items as Yjs client {cid}, which is another device's")
        return unbound

    def committed(self, accepted: Iterable[Accepted]) -> None:
        """After the batch holding ``accepted`` is durable: readers see the new state of those records."""
        for a in accepted:
            self.docs.unpin(a.collection, a.record)
            self.reader.reload(a.collection, a.record)
            self.durable = max(self.durable, a.seq)
            self._staged_dedup.pop((a.device, a.change_id), None)  # the next group's entries stay
        self.clients.committed(self.durable)

    def abandon(self) -> None:
        """A commit failed: forget everything staged (the store is the truth)."""
        self.docs.forget()
        self.reader.forget()
        self._staged_dedup.clear()
        self._stored_dedup.clear()
        self._dedup_top.clear()
        self.clients.abandon()
        self.head = self.durable = int(self.store.load(("relay", "head")) or b"0")

    # -- reading -------------------------------------------------------------------------------------------

    def needs_reset(self, since: int, relay: str | None) -> bool:
        """A cursor from another relay log, from before compaction, from the future, or a first sync (no
        relay id yet): full resync. A cursor of 0 from this relay (a device that synced while the relay was
        empty) is a valid cursor: a delta from the start of the log."""
        if relay is None:
            return self.durable > 0
        return relay != self.relay_id or since < self.floor or since > self.head

    def record_update(self, collection: str, record: str) -> bytes:
        """The record's whole merged state as one update, from the store."""
        parts = []
        snap = self.store.load(("snap", collection, record))
        if snap is not None:
            parts.append(snap)
        parts += [raw[1:] for _, raw in self.store.load_range(("upd", collection, record))]
        if not parts:
            return _EMPTY_UPDATE
        return merged(parts)

    def _visible(self, grant: Grant, collection: str, record: str) -> bool:
        if not grant.limited(collection):
            return True
        return grant.in_scope(collection, self.reader.get(collection, record).doc.state().fields)

    def item_for(self, grant: Grant, a: Accepted) -> Item | None:
        """How a stored change reaches a device with this grant: the update itself, or (for collections
        limited by ``where``, where the device may never have seen the record) its whole state; None when
        it is out of the device's scope. A change that moved the record out of the scope (it was in scope
        just before it) reaches the device as an item with an empty update: "this record left your scope"."""
        if not grant.can_read(a.collection):
            return None
        if not self._visible(grant, a.collection, a.record):
            if a.prev is not None and grant.limited(a.collection):
                fields = self.schema.collections[a.collection].fields
                was = {n: decode_value(fields.get(n), v) for n, v in a.prev.items()}
                if grant.in_scope(a.collection, was):
                    return Item(a.collection, a.record, a.seq, b"")
            return None
        if grant.limited(a.collection):
            return Item(a.collection, a.record, a.seq, self.record_update(a.collection, a.record))
        return Item(a.collection, a.record, a.seq, a.update)

    def returned(self, grant: Grant, device: str, change_ids: Iterable[int]) -> list[Item]:
        """The records in which the relay stored any of these changes of ``device`` (changes it discarded,
        see ``Pull.returns``), each as its whole merged state, within the read scope (whatever collections
        the pull asks for: the device forgets the ids once answered): a delta skips a device's own changes,
        so a change it discarded after the relay stored it would otherwise never come back to it."""
        keys = [("dedup", device, cid) for cid in sorted(set(change_ids))[:MAX_RETURNS]]
        records: dict[tuple[str, str], int] = {}
        for raw in self.store.load_many(keys) if keys else []:
            if raw is None:
                continue  # never stored here (refused, held, or never arrived)
            seq = int(raw.partition(b" ")[0])
            entry = self.store.load(("log", seq))
            if entry is None or seq > self.durable:
                continue  # compacted away (then long since acknowledged), or not durable yet
            a = _decode_entry(seq, entry)
            if grant.can_read(a.collection):
                records.setdefault((a.collection, a.record), seq)
        return [Item(c, rid, seq, self.record_update(c, rid)) for (c, rid), seq in records.items()
                if self._visible(grant, c, rid)]

    def delta(self, grant: Grant, device: str, since: int, collections: frozenset[str] | None, *,
              max_items: int = 500, max_bytes: int = 4 << 20) -> tuple[list[Item], int]:
        """One page of changes after ``since`` within the scope; returns the items and the seq the page
        covers up to (the device's next cursor). Its own changes are skipped: the device has them.

        Raises ``LogGap`` when entries after ``since`` are gone (seqs have no holes but at the bottom, which
        compaction raises): compacted while a pull paged through the log, they would have been skipped for
        good, and the device needs a full resync instead."""
        items: list[Item] = []
        size = 0
        to = since
        seen: set[tuple[str, str]] = set()
        rows = self.store.load_range(("log",), start=("log", since + 1), limit=max_items)
        if (rows and int(rows[0][0][1]) != since + 1) or (not rows and since < self.durable):
            raise LogGap(f"log entries after {since} were compacted away (floor {self.floor})")
        for key, raw in rows:
            seq = int(key[1])
            if seq > self.durable:
                break  # written, but its commit has not returned: it may not be durable yet (``begin_commit``)
            a = _decode_entry(seq, raw)
            if a.device == device or (collections is not None and a.collection not in collections) \
                    or (grant.limited(a.collection) and (a.collection, a.record) in seen):
                to = a.seq  # skipped: its own change, another collection, or a whole state already sent
                continue
            item = self.item_for(grant, a)
            if item is not None:
                if items and size + len(item.update) > max_bytes:
                    break  # the next page starts with this entry
                seen.add((a.collection, a.record))
                items.append(item)
                size += len(item.update)
            to = a.seq
        return items, to

    def count_delta(self, grant: Grant, device: str, since: int, collections: frozenset[str] | None,
                    *, chunk: int = 5000) -> int:
        """How many log entries after ``since`` a delta pull would send: those of other devices in readable
        (and wanted) collections. For collections limited by ``where`` this is an upper bound (records out
        of scope are only found out while sending)."""
        n = 0
        start = since + 1
        while True:
            rows = self.store.load_range(("log",), start=("log", start), limit=chunk)
            for key, raw in rows:
                a = _decode_entry(int(key[1]), raw)
                if a.seq > self.durable:
                    return n
                if a.device != device and grant.can_read(a.collection) and (
                        collections is None or a.collection in collections):
                    n += 1
            if len(rows) < chunk:
                return n
            start = int(rows[-1][0][1]) + 1

    def scope_records(self, grant: Grant, collections: frozenset[str] | None) -> Iterator[tuple[str, str, int]]:
        """Every record (collection, id, seq of its first change here) in the grant's read scope, for a full
        resync (which sends each record's whole state; its items' seqs are informative only: the cursor
        the resync ends on is the relay's head)."""
        for part in self.scope_chunks(grant, collections):
            yield from part

    def scope_chunks(self, grant: Grant, collections: frozenset[str] | None
                     ) -> Iterator[list[tuple[str, str, int]]]:
        """``scope_records`` in parts: the records in scope among each ``scope_chunk`` records looked at (a
        part may be empty). Under a ``where`` limit every record of the collection is loaded to be checked
        (20,000 of them take over a second): the relay's event loop serves other connections between parts.
        Use it from the event loop only (it reads the readers' cache); the store is read in pages, so
        commits between parts are fine (a record they change is sent as it is then)."""
        step = self.scope_chunk
        for coll in self.schema:
            c = coll.name
            if not grant.can_read(c) or (collections is not None and c not in collections):
                continue
            rows: list[tuple[str, int]] = []
            for key, raw in self.store.iter_range(("recs", c), batch=step):
                rows.append((str(key[2]), int(raw)))
                if len(rows) == step:
                    yield self._in_scope(grant, c, rows)
                    rows = []
            if rows:
                yield self._in_scope(grant, c, rows)

    def _in_scope(self, grant: Grant, c: str, rows: list[tuple[str, int]]) -> list[tuple[str, str, int]]:
        """The records among ``rows`` (id, seq) of collection ``c`` within the grant's scope. Those not in
        the readers' cache are loaded in bulk and not cached (``RecordDocs.peek_many``)."""
        if not grant.limited(c):
            return [(c, rid, seq) for rid, seq in rows]
        docs = self.reader.peek_many([(c, rid) for rid, _ in rows])
        return [(c, rid, seq) for (rid, seq), lr in zip(rows, docs, strict=True)
                if grant.in_scope(c, lr.doc.state().fields)]

    # -- compaction ----------------------------------------------------------------------------------------

    def compact(self, *, chunk: int = 5000) -> Batch | None:
        """A batch that drops the oldest log entries beyond ``keep`` (and their dedup keys), raising the
        floor; None when there is nothing to drop. Records keep their merged state, so a device whose
        cursor falls below the floor gets a full resync of its scope instead."""
        target = self.durable - self.keep  # only committed entries: the next group may be staged already
        if target - self.floor < self.compact_slack:
            return None  # not after every group once the log is full: in steps of compact_slack entries
        batch = Batch()
        new_floor = self.floor
        tops: dict[str, int] = {}
        for key, raw in self.store.load_range(("log",), start=("log", self.floor + 1), limit=chunk):
            seq = int(key[1])
            if seq > target:
                break
            a = _decode_entry(seq, raw)
            batch.remove(("log", seq))
            batch.remove(("dedup", a.device, a.change_id))
            if a.change_id > tops.get(a.device, -1):
                tops[a.device] = a.change_id
            new_floor = seq
        if new_floor == self.floor:
            return None
        batch.save(("relay", "floor"), str(new_floor).encode())
        for device, top in tops.items():  # (the highest change id of each device whose dedup key is gone)
            was = self._compacted_top(device)
            if was is None or top > was:
                batch.save(("relay", "compacted", device), str(top).encode())
        return batch

    def compacted(self, batch: Batch) -> None:
        for key, value in batch.saves.items():
            if key[:2] == ("relay", "compacted"):
                self._compacted[str(key[2])] = int(value)
        raw = batch.saves.get(("relay", "floor"))
        if raw is not None:
            self.floor = int(raw)
