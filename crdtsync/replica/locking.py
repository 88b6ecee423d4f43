"""One call at a time: the replica's public methods run under a per-replica reentrant lock.

A replica's records are pycrdt documents, and pycrdt documents must not be used from two threads at once
(Yrs panics, ``ExclusiveAcqFailed``, or pycrdt's transaction bookkeeping breaks; a write could then be
lost from the record's document). Apps share one ``Replica`` between their parts (a UI thread, a
worker, the sync client's event loop), so every public method of the class holds ``self._lock`` (a
``threading.RLock``) while it runs. The lock is reentrant: a method may call another, and a change
listener, called on the writing thread while the lock is held, may call the replica. The cost is one
acquire and release per call (about 0.2 us, of the 25-35 us a write takes).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["LOCKED", "holds_lock", "one_at_a_time"]

_T = TypeVar("_T", bound=type)

#: the attribute a locked method carries (tests check that every public method has it)
LOCKED = "__crdtsync_locked__"


def _locked(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        lock = self._lock
        lock.acquire()  # (a fifth cheaper than ``with``: every write pays it)
        try:
            return fn(self, *args, **kwargs)
        finally:
            lock.release()

    setattr(run, LOCKED, True)
    return run


_F = TypeVar("_F", bound=Callable[..., Any])


def holds_lock(fn: _F) -> _F:
    """Mark a public method that takes ``self._lock`` itself, for ``one_at_a_time`` to leave as it is (a
    wrapper's extra call was a hundredth of ``update()``)."""
    setattr(fn, LOCKED, True)
    return fn


def one_at_a_time(cls: _T) -> _T:
    """Make every public method of ``cls`` (its own and its bases', not class or static methods, nor
    properties) run holding ``self._lock``. Apply it to the final class."""
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name)
        if inspect.isfunction(attr) and not getattr(attr, LOCKED, False):
            setattr(cls, name, _locked(attr))
    return cls
