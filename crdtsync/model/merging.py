"""Merging remote updates into a record's document, and holding back those that cannot go in yet. No I/O."""

from __future__ import annotations

from collections.abc import Sequence
from types import EllipsisType
from typing import Any

from pycrdt import Doc, get_update, merge_updates

from ..errors import MalformedUpdate
from .checks import CheckedRecordDoc
from .trace import Traced, Tracer, any_strings, history_from_update
from .yrs import RawTxn

__all__ = ["MergingRecordDoc", "integrated", "merged"]


def merged(updates: Sequence[bytes]) -> bytes:
    """One update holding ``updates`` (one or more): the update itself when there is one, as
    ``merge_updates`` of a single update would re-encode it for nothing."""
    return updates[0] if len(updates) == 1 else merge_updates(*updates)


def integrated(update: bytes, state: bytes, *, applied: bytes | None = None) -> bool:
    """Whether all of ``update`` is in a document whose state vector is ``state``.

    Every struct (none waits for a missing one: the diff against ``state`` has none left), and every
    deletion is of an item the document has. Yrs keeps a deletion of an item it lacks pending inside the
    document, where it is neither stored nor shown, and applies it in memory when the item arrives: a
    record then showed a field deleted that its stored updates, loaded afresh, still held. The diff
    carries the update's whole delete set (after its zero struct count); each deleted range must lie under
    the document's clock for its client.

    ``applied``: the update of the transaction that applied ``update``, if known. Equal to ``update``, it
    deleted all that ``update`` deletes (the usual case, and a bytes comparison instead of decoding).
    """
    rest = get_update(update, state)
    if rest[:1] != b"\x00":
        return False
    if rest == b"\x00\x00" or update == applied:  # no deletion, or every one done
        return True
    return _deletions_known(rest, state)


def _varuints(data: bytes, pos: int) -> list[int]:
    """Every varuint in ``data`` from ``pos``, read inline: this runs for every update merged, and a
    ``Reader`` call per number tripled its cost."""
    values = []
    end = len(data)
    while pos < end:
        b = data[pos]
        pos += 1
        if b < 0x80:
            values.append(b)
            continue
        n, shift = b & 0x7F, 7
        while True:
            if pos >= end or shift > 63:
                raise ValueError("truncated or overlong varuint")
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        values.append(n)
    return values


def _deletions_known(rest: bytes, state: bytes) -> bool:
    """``integrated``'s check of the delete set in ``rest`` (from byte 1) against ``state``."""
    sv = _varuints(state, 0)  # count, then client and clock pairs
    have = {sv[i]: sv[i + 1] for i in range(1, len(sv) - 1, 2)}
    values = _varuints(rest, 1)  # clients; client, ranges; clock, length ...
    i, clients = 1, values[0] if values else 0
    for _ in range(clients):
        if i + 1 >= len(values):
            raise ValueError("truncated delete set")
        clock_max = have.get(values[i], 0)
        ranges = values[i + 1]
        i += 2
        for _ in range(ranges):
            if i + 1 >= len(values):
                raise ValueError("truncated delete set")
            if values[i] + values[i + 1] > clock_max:
                return False
            i += 2
    return True


#: the history length from which ``apply_traced`` reads a change's new entries off its update rather than
#: from the history's delta, which walks every entry (7-10 ns each: about the 5 us of reading the update at 500)
_DELTA_ENTRIES = 500


class MergingRecordDoc(CheckedRecordDoc):
    """``apply``, ``apply_many`` and ``apply_traced`` of remote updates, with the held updates."""

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
        applied = self._captured[captured] if len(self._captured) == captured + 1 else None
        if integrated(update, self.state_vector(), applied=applied):
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
        return merged(out)

    def _retry_held(self) -> None:
        """Let in the largest set of held updates that goes in whole (see ``_fitting_together``): those
        that fit alone, and those that only fit together (``merge(u2, u4)`` and ``u3`` once ``u1`` is in).
        One pass is enough: what stays out does not go in even with all the rest."""
        if not self.held:
            return
        together = self._fitting_together()
        if not together:
            return
        if self._take(merged(together)):  # as on the copies
            for h in together:
                self.held.remove(h)

    def _fitting_together(self) -> list[bytes]:
        """The largest set of held updates that is integrated whole when applied together ([] if none).

        Tried on copies of the document: all of them at once, then only those that went in whole, and so
        on until every one tried goes in. One that needs a part of an update still waiting drops out, and
        so may another that needed it; one that goes in alone never drops out (having more structs
        around never keeps one out), so this is a few copies whatever the number held, not one per
        held update.
        """
        together = list(self.held)
        state = self.full_update()
        while together:
            probe: Doc[Any] = Doc()
            probe.apply_update(state)
            probe.apply_update(merged(together))
            state_now = probe.get_state()
            fits = [h for h in together if integrated(h, state_now)]
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
        all). If some of them wait for an update not received, they are held each apart instead and
        those that fit go in (merged, the gap would hold back all of them). Returns the part that
        was new to this document (b"" if none)."""
        if len(updates) == 1:
            return self.apply(updates[0])
        if not self._parts and not self.held:
            new = self._apply_fresh_many(updates)
            if new is not None:
                return new
        self._captured.clear()
        try:
            if not self._take(merge_updates(*updates)):  # held, each apart: what fits goes in below
                for u in updates:
                    self._hold(u)
            self._retry_held()
        except ValueError as e:
            raise MalformedUpdate(f"{self.collection.name}/{self.id}: {e}") from None
        return self._new_part()

    def _all_in(self, updates: list[bytes], state: bytes) -> bool:
        """``integrated`` for updates just applied to a document that held nothing before them (whose
        state vector is now ``state``): its deletions are then exactly theirs if all were done, so their
        delete sets merged, compared with the document's, usually settle it without decoding any."""
        rests = [get_update(u, state) for u in updates]
        if any(r[:1] != b"\x00" for r in rests):
            return False
        dels = [r for r in rests if r != b"\x00\x00"]
        if not dels:
            return True
        with self._txn() as txn:
            mine = bytes(self._ydoc.get_update(txn._txn, state))  # no structs: the document's deletions
        if merged(dels) == mine:
            return True
        return all(_deletions_known(r, state) for r in dels)

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
            whole = self._all_in(updates, state)
        except ValueError:
            whole = False
        if not whole or state == b"\x00":
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
            whole = self._all_in([update], state)
        except ValueError as e:
            raise MalformedUpdate(f"{self.collection.name}/{self.id}: {e}") from None
        if not whole:
            self.held.append(update)
            self._build(self._ydoc.client_id())
            return b""
        if state == b"\x00":  # nothing in it (an empty update)
            return b""
        self._parts = [update]
        self._tail_bytes = 0
        self._changed_remotely()
        return update

    def apply_traced(self, update: bytes, *, exact: bool = False,
                     strings: list[str] | EllipsisType | None = ...) -> Traced | None:
        """``apply``, reporting what the update did (``Traced``): the relay checks each change by that.

        One bare Yrs transaction, watched by lasting subscriptions (``model/trace.py``). None, and nothing
        applied, where that does not hold: a document a pycrdt ``Doc`` wraps (its observers expect pycrdt
        transactions) or one with held updates (``apply`` retries them): use ``apply`` and observe it then.

        The history entries it inserted are read off the update when all it holds is JSON strings (any
        change but a text edit: ``history_from_update``), else (or ``exact``) from the history's delta,
        whose cost grows with the history. When the update cannot tell (a forged one), the document is
        rebuilt as it was and the update applied again, traced by the delta. ``strings``: the update's
        ``any_strings`` when the caller read them already (the relay, with its shape check:
        ``scan_update``); then they are used whatever the history's length (the delta of a short history
        costs less than reading the update, not less than using what was read).
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
        # a short history's delta costs less than reading the update in Python (about 10 ns an entry against
        # 5 us a change): the update is read only for a long one (its length is known after the first change)
        if strings is ...:
            short = self._hist_len is not None and self._hist_len < _DELTA_ENTRIES
            strings = None if exact or short else any_strings(update)
        exact = exact or strings is None
        traced = tracer.arm(exact=exact)
        hist = tracer.history
        try:
            with RawTxn(ydoc) as txn:
                t = txn._txn
                length = hist.len(t)
                ydoc.apply_update(t, update)
                grown = hist.len(t) - length
                self._hist_len = length + grown
        except ValueError as e:
            raise MalformedUpdate(f"{self.collection.name}/{self.id}: {e}") from None
        finally:
            tracer.disarm()
        if not traced.new and traced.after == b"\x00":
            # nothing changed, so Yrs reported no transaction (an update already in, e.g. sent again): the
            # state vectors are the document's own (they were left empty, and everything looked pending)
            traced.before = traced.after = self.state_vector()
        rest = get_update(update, traced.after)
        # a struct waits, or a deletion of items the document lacks (see ``integrated``): Yrs would keep that
        # deletion pending and apply it to the items when they come, inside another device's change (a
        # forged delete set wiped a device's next writes, and their history, under its name)
        if rest[:1] != b"\x00" or (rest != b"\x00\x00" and update != traced.new
                                   and not _deletions_known(rest, traced.after)):
            self.held.append(update)
            self._build(ydoc.client_id())  # without what is pending
            return Traced(held=True)
        new = traced.new
        if traced.history_changed and not exact and strings is not None \
                and not history_from_update(traced, grown, strings):
            self._build(ydoc.client_id())  # as it was: the update again, traced exactly
            return self.apply_traced(update, exact=True, strings=None)
        if new:
            self._parts.append(new)
            self._tail_bytes += len(new)
            self._changed_remotely()
            self._fold_parts()
        return traced

