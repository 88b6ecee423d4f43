"""A bound on how long one store call may take: the relay's answer to a database that stops answering.

A PostgreSQL server that hangs (a frozen machine, a partition that drops packets without a reset) leaves a
query waiting for ever: the relay's writer waits for its commit, and the reads its event loop does (staging
a write group) wait for the store's lock behind it, so health checks, new connections and even SIGTERM went
unanswered for as long as the server hung, and nothing was logged. ``WatchedStore`` times every call into
the store it wraps; a thread of its own looks at the calls in progress, and when one has not returned
within ``limit`` seconds it calls ``stuck`` once, from that thread: it runs whatever the event loop is
waiting for. ``crdtsync relay`` passes ``exit_stuck``, which logs CRITICAL and ends the process with status
1 for its supervisor to restart it (nothing acknowledged is lost: acks follow commits; a device sends what
was not acknowledged again). TCP keepalives and ``tcp_user_timeout`` (``PostgresStore``) end a connection
whose server is gone from the network sooner; this bound also covers a server that is there but does not
answer.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from ..store.base import Batch, ByteStore
from ..store.keys import Key

__all__ = ["WatchedStore", "exit_stuck"]

log = logging.getLogger("crdtsync.relay")


def exit_stuck(what: str, seconds: float) -> None:
    """``crdtsync relay``'s answer to a stuck store call: log it, say it on stderr, and exit with status 1 at
    once (``os._exit``: the event loop may be blocked in that very call, so nothing else would run)."""
    log.critical("the store has not answered %s for %.1f s (--store-timeout): the relay exits for its supervisor "
                 "to restart it", what, seconds)
    print(f"crdtsync relay: the store has not answered {what} for {seconds:.1f} s: exiting", file=sys.stderr,
          flush=True)
    os._exit(1)


class WatchedStore(ByteStore):
    """``inner``, each of whose calls calls ``stuck(what, seconds)`` once (from a thread of its own) when it
    has not returned after ``limit`` seconds. ``close`` stops the watch and closes ``inner``."""

    def __init__(self, inner: ByteStore, limit: float, stuck: Callable[[str, float], None] = exit_stuck) -> None:
        if not limit > 0:
            raise ValueError(f"the store call limit must be over 0 seconds, not {limit}")
        self.inner = inner
        self.limit = limit
        self._stuck = stuck
        # call number -> (what, when it started); no lock: under the GIL, next() on a count, a dict's item
        # set or deleted, and list() of its values are each atomic: no lock on every store call
        self._calls: dict[int, tuple[str, float]] = {}
        self._numbers = itertools.count()
        self._closed = threading.Event()
        # how often the calls in progress are looked at: a stuck call is noticed within limit + period
        self.period = max(0.05, min(1.0, limit / 4))
        self._thread = threading.Thread(target=self._watch, name="crdtsync-store-watchdog", daemon=True)
        self._thread.start()

    @property
    def sync_only(self) -> bool:  # type: ignore[override]
        return self.inner.sync_only

    def _watch(self) -> None:
        while not self._closed.wait(self.period):
            now = time.monotonic()
            oldest = min(list(self._calls.values()), key=lambda c: c[1], default=None)
            if oldest is not None and now - oldest[1] > self.limit:
                self._stuck(oldest[0], now - oldest[1])
                return  # said once

    def _begin(self, what: str) -> int:
        n = next(self._numbers)
        self._calls[n] = (what, time.monotonic())
        return n

    def _end(self, n: int) -> None:
        del self._calls[n]

    def load(self, key: Key) -> bytes | None:
        n = self._begin("a read")
        try:
            return self.inner.load(key)
        finally:
            self._end(n)

    def load_range(self, prefix: Key, *, start: Key | None = None, limit: int | None = None,
                   reverse: bool = False) -> list[tuple[Key, bytes]]:
        n = self._begin("a read")
        try:
            return self.inner.load_range(prefix, start=start, limit=limit, reverse=reverse)
        finally:
            self._end(n)

    def load_many(self, keys: Sequence[Key]) -> list[bytes | None]:
        n = self._begin("a read")
        try:
            return self.inner.load_many(keys)
        finally:
            self._end(n)

    def load_ranges(self, prefixes: Sequence[Key]) -> list[list[tuple[Key, bytes]]]:
        n = self._begin("a read")
        try:
            return self.inner.load_ranges(prefixes)
        finally:
            self._end(n)

    def iter_range(self, prefix: Key, *, batch: int = 1000) -> Iterator[tuple[Key, bytes]]:
        pages = self.inner.iter_range(prefix, batch=batch)
        while True:  # each step may read a page: timed, the caller's work between steps not
            n = self._begin("a read")
            try:
                item = next(pages, None)
            finally:
                self._end(n)
            if item is None:
                return
            yield item

    def commit(self, batch: Batch) -> None:
        n = self._begin("a commit")
        try:
            self.inner.commit(batch)
        finally:
            self._end(n)

    def begin_commit(self, batch: Batch) -> Callable[[], None]:
        n = self._begin("a commit")
        try:
            finish = self.inner.begin_commit(batch)
        finally:
            self._end(n)

        def timed() -> None:
            m = self._begin("a commit")
            try:
                finish()
            finally:
                self._end(m)
        return timed

    def close(self) -> None:
        self._closed.set()
        self.inner.close()
