"""Who gets into the relay, and how fast they may send: the per-connection rate limit (``Bucket``), the cap
on connections open at once (``ConnectionCap``), and the open-files figures it is derived from.

The cap exists so that ``accept()`` never runs out of file descriptors: past that point asyncio logged
"socket.accept() out of system resource" with a traceback hundreds of thousands of times a minute, and
health checks and real devices could no longer get in. A connection over the cap is refused at its HTTP
handshake (503, with the reason) while the relay still has descriptors to answer it with. A burst of
connections arriving at once can still take the descriptors the cap keeps in reserve before any of them is
counted (they are counted at their handshake): asyncio then stops accepting for a second, and
``AcceptErrors`` makes its error one log line a minute instead of a traceback per failed ``accept()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from ..timeouts import wait_for

__all__ = ["AcceptErrors", "Bucket", "ConnectionCap", "LogThrottle", "default_max_connections", "open_files_limit",
           "raise_open_files_limit", "refuse"]

log = logging.getLogger("crdtsync.relay")

#: what a process is assumed to have when the platform cannot say (no ``resource`` module: Windows)
_UNKNOWN_LIMIT = 1024


@dataclass
class Bucket:
    """A token bucket: ``delay()`` is how long to wait before the next frame (0 if none). ``clock`` gives
    the time in seconds (``time.monotonic``; a test passes its own)."""

    rate: float
    burst: int
    tokens: float = 0.0
    clock: Callable[[], float] = time.monotonic
    last: float = field(init=False)
    warned: bool = False

    def __post_init__(self) -> None:
        self.last = self.clock()

    def delay(self) -> float:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        self.tokens -= 1
        return -self.tokens / self.rate

    async def slow(self, delay: float) -> bool:
        """Wait ``delay`` seconds (a positive ``delay()``) before the next frame is read (slowed down, never
        dropped); returns True the first time this bucket made its connection wait (one log line per
        connection). Called only when there is a delay: a coroutine made for every frame cost the relay
        a microsecond or two per change."""
        first = not self.warned
        self.warned = True
        await asyncio.sleep(delay)
        return first


def open_files_limit() -> int:
    """This process's soft limit of open files (RLIMIT_NOFILE), or 1024 where the platform has none."""
    try:
        import resource
    except ImportError:
        return _UNKNOWN_LIMIT
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 2**20 if soft == resource.RLIM_INFINITY else soft


def default_max_connections(open_files: int | None = None) -> int:
    """The cap on connections for a process allowed ``open_files`` descriptors (default: its soft limit):
    that limit less a margin (an eighth, at least 64, at most half) for the database's files, the logs, the
    listening sockets, and the connections being refused or still in their handshake."""
    n = open_files_limit() if open_files is None else open_files
    margin = max(min(64, n // 2), n // 8)
    return max(1, n - margin)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit of open files to the hard limit, where the system allows it; returns the soft
    limit before and after (the same if it could not be raised, or has no ``resource`` module)."""
    try:
        import resource
    except ImportError:
        return _UNKNOWN_LIMIT, _UNKNOWN_LIMIT
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as e:  # (macOS: a hard limit above OPEN_MAX)
        log.info("could not raise the open files limit from %d to %d: %s", soft, hard, e)
        return soft, soft
    return soft, hard


class LogThrottle:
    """One WARNING line for the first of a kind of event, then at most one every ``every`` seconds saying
    how many there were meanwhile: refused tokens came at 2,400 a second from one client with none, each a
    line (800 MB of log an hour). ``due()`` counts one event and says when a line is due (for callers with
    lines of their own); calling it with a ``detail`` logs ``what: detail``."""

    def __init__(self, what: str = "", *, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self.every = every
        self.clock = clock
        self.count = 0  # in all
        self._unlogged = 0
        self._logged_at: float | None = None

    def due(self) -> int:
        """Count one event; return how many there were since the last line if a line is due now, else 0."""
        self.count += 1
        self._unlogged += 1
        now = self.clock()
        if self._logged_at is not None and now - self._logged_at < self.every:
            return 0
        n, self._unlogged, self._logged_at = self._unlogged, 0, now
        return n

    def __call__(self, detail: str) -> None:
        n = self.due()
        if n:
            more = f" ({n - 1} more since the last report)" if n > 1 else ""
            log.warning("%s: %s%s; next report in %g s at the earliest", self.what, detail, more, self.every)


class ConnectionCap:
    """At most ``limit`` websocket connections at once (devices and Yjs clients alike; None: the default
    for this process, ``default_max_connections()``). A connection is counted from ``admit`` until its
    TCP connection is gone. Refusals are logged once, then at most once every ``log_every`` seconds with
    how many there were meanwhile (a flood of refused connections is no flood of log lines)."""

    def __init__(self, limit: int | None = None, *, log_every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = default_max_connections() if limit is None else limit
        if self.limit < 1:
            raise ValueError(f"a connection cap is at least 1, not {self.limit}")
        self.open: set[ServerConnection] = set()
        self._refusals = LogThrottle(every=log_every, clock=clock)

    def __len__(self) -> int:
        return len(self.open)

    @property
    def refused(self) -> int:
        """Connections refused in all."""
        return self._refusals.count

    def admit(self, ws: ServerConnection) -> bool:
        """Count ``ws`` in (True), or refuse it (False) when ``limit`` connections are open. A connection
        already counted is admitted again (the relay admits at the handshake, ``YjsRooms`` when serving)."""
        if ws in self.open:
            return True
        if len(self.open) >= self.limit:
            self._refuse()
            return False
        self.open.add(ws)
        ws.connection_lost_waiter.add_done_callback(lambda _: self.open.discard(ws))
        return True

    def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """For websockets' ``process_request``: None (go on with the handshake) if admitted, else a 503."""
        if self.admit(ws):
            return None
        return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                          f"the relay is at its limit of {self.limit} connections; try again later\n")

    def _refuse(self) -> None:
        n = self._refusals.due()
        if n:
            log.warning("refused %d connection(s): %d open, the limit (relay --max-connections); next report "
                        "in %g s at the earliest", n, self.limit, self._refusals.every)


_ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class AcceptErrors:
    """An event loop exception handler for the relay's loop. asyncio reports a failed ``accept()`` (out of
    file descriptors) with a traceback, once for every connection waiting, up to 100 a turn of the loop, and
    again at every retry: 481,699 tracebacks (214 MB of log) in 90 s. Here they make one WARNING line, then
    at most one every ``every`` seconds with their count. Everything else goes to ``previous`` (the loop's
    handler before, or its default)."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, previous: _ExceptionHandler | None = None, *, every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.previous = previous
        self._errors = LogThrottle(every=every, clock=clock)

    @property
    def count(self) -> int:
        """Failed accepts reported in all."""
        return self._errors.count

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != self.MESSAGE:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        n = self._errors.due()
        if n:
            log.warning("accept() failed %d time(s): %s (a burst of connections beyond what --max-connections "
                        "keeps in reserve; asyncio accepts again after a second)", n, context.get("exception"))


#: how long a refused connection may take to answer its close before it is dropped (``refuse``)
REFUSE_WAIT = 1.0


async def refuse(ws: ServerConnection, code: int, reason: str, wait: float = REFUSE_WAIT) -> None:
    """Close a connection refused at once (a bad token, path or room) with ``code`` and ``reason``, and drop
    it if its client does not answer the close within ``wait`` seconds: websockets waits 10 s for that, and
    a client with no token held a connection slot (``ConnectionCap``) all that time, 60 a second keeping
    five in six real devices out."""
    try:
        await wait_for(ws.close(code, reason), wait)
    except TimeoutError:
        ws.transport.abort()
