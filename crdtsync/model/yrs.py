"""Faster paths over pycrdt's internals, in one place (what a pycrdt upgrade must re-check; the project
pins ``pycrdt>=0.14.13,<0.15``). Each falls back to, or matches exactly, what pycrdt's public API does."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from pycrdt import Doc, TransactionEvent

__all__ = ["RawTxn", "YDoc", "observe"]

#: the Yrs document class pycrdt's ``Doc`` wraps
YDoc: Any = type(Doc()._doc)


class RawTxn:
    """A Yrs transaction on a document that no pycrdt ``Doc`` wraps yet (see ``RecordDoc.doc``): what
    ``Doc.transaction()`` does, without the bookkeeping (origins, locks, observer errors) that a document
    nobody observes has no use for. It cost 2 us against 0.7, three times per record merged."""

    __slots__ = ("_txn", "_ydoc")

    def __init__(self, ydoc: Any) -> None:
        self._ydoc = ydoc
        self._txn: Any = None

    def __enter__(self) -> RawTxn:
        self._txn = self._ydoc.create_transaction()
        return self

    def __exit__(self, *exc: object) -> None:
        txn, self._txn = self._txn, None
        try:
            txn.commit()
        finally:
            txn.drop()


def observe(doc: Doc[Any], callback: Callable[[TransactionEvent], None]) -> Any:
    """``doc.observe(callback)`` without its cost: pycrdt 0.14's ``Doc.observe`` evaluates
    ``typing.cast(Callable[[TransactionEvent], None], ...)`` at run time, which misses typing's cache and
    took 80 us, a fifth of merging a record. The same subscription, made the way ``observe`` makes it."""
    try:
        from pycrdt._doc import observe_callback

        sub = doc._doc.observe(functools.partial(observe_callback, callback, doc))
        doc._subscriptions.append(sub)
        return sub
    except (ImportError, AttributeError):  # another pycrdt: the public way
        return doc.observe(callback)
