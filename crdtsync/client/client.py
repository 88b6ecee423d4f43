"""``SyncClient``: keeps a replica in sync with a relay over websockets.

It connects (and reconnects, with exponential backoff and jitter), and runs sync runs one at a time from a
queue: automatically each time the connection comes (back), on demand (``sync_now``, optionally limited
to some collections), and on a schedule (``interval``). A run uploads the replica's pending changes first,
in order, and waits for the relay to store them; then it downloads what changed since the device's cursor,
page by page, storing the cursor after each page. After a full run the relay streams changes live. (A
first sync with a relay that has pending changes downloads the full resync before uploading, so its own
changes are not sent back to it.)

A run cut short by a lost connection is not lost: its changes go back to ``pending`` and the same request
runs again after reconnecting (a resend is recognised by the relay). Only a refused token (or a device id
that belongs to another user) stops the client: ``sync_now`` then raises ``AuthError``. So does a replica
closed before its client (close the client first): the client stops, with a ``failed`` status event and
``SyncError("the replica was closed ...")`` for every waiting and later ``sync_now``, instead of
reconnecting to meet the closed store again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.uri import parse_uri

from ..errors import (
    AuthError,
    LocalError,
    MalformedUpdate,
    RemoteValidationError,
    StoreBehind,
    StoreClosed,
    SyncError,
    ValidationError,
)
from ..protocol.connection import Connection, Role, State
from ..protocol.events import Ack, Bye, Change, Changes, Event, Hello, Item, Live, ProtocolError, Pull, Push, Welcome
from ..protocol.frames import MAX_FRAME, MAX_PUSH, MAX_RETURNS
from ..replica import PendingChange, Record, Replica
from ..timeouts import wait_for
from .backoff import Backoff
from .status import SyncResult, SyncStatus

__all__ = ["SyncClient"]

log = logging.getLogger("crdtsync.client")

_CURSOR = "sync.cursor"
_SCHEMA = "sync.schema"  # the fingerprint of the relay's schema at the last sync (WELCOME's ``schema``)
_FATAL = {4401, 4403, 4404}
#: ``close()`` cancels its tasks again each this many seconds while they run on (a library under them may
#: have lost a cancellation), and stops waiting for them after ``_CLOSE_LIMIT``
_CLOSE_RETRY = 1.0
_CLOSE_LIMIT = 15.0


class _Lost(Exception):
    """The connection went away (or broke the protocol) in the middle of something."""


@dataclass
class _Request:
    collections: frozenset[str] | None
    futures: list[asyncio.Future[SyncResult]] = field(default_factory=list)
    running: bool = False


class _Session:
    """One live connection: the protocol core, acks awaited, the pull being received."""

    def __init__(self, ws: ClientConnection, max_frame: int) -> None:
        self.ws = ws
        self.conn = Connection(Role.CLIENT, max_frame=max_frame)
        self.acks: dict[int, asyncio.Future[Ack]] = {}
        # pages of the pull being received, in order; a LIVE frame that arrives while pages wait here goes
        # behind them (``_on_event``), so that it is applied, and moves the cursor, only after them
        self.pages: asyncio.Queue[Changes | Live | _Lost] = asyncio.Queue()
        self.welcome: Welcome | None = None
        self.welcomed: asyncio.Future[Welcome] = asyncio.get_running_loop().create_future()
        self.lost: _Lost | None = None
        # while a pull is received: the records live updates brought meanwhile (``_download``: a full resync
        # does not remove them as records it did not bring)
        self.live_records: set[tuple[str, str]] | None = None

    async def send(self, ev: Event) -> None:
        if self.lost is not None:
            raise self.lost
        self.conn.send(ev)
        try:
            for data in self.conn.data_to_send():
                await self.ws.send(data)
        except ConnectionClosed as e:
            raise _Lost(f"connection lost: {_said(e)}") from None

    def fail(self, reason: str) -> None:
        """End the session: every future still waiting gets the loss. Each is marked as seen too
        (``exception()``): one nobody awaits any more (the welcome, when sending the hello already
        failed) made asyncio log "Future exception was never retrieved" at every refused connection."""
        if self.lost is None:
            self.lost = _Lost(reason)
        waiting: list[asyncio.Future[Any]] = [f for f in self.acks.values() if not f.done()]
        if not self.welcomed.done():
            waiting.append(self.welcomed)
        for f in waiting:
            f.set_exception(self.lost)
            f.exception()
        self.acks.clear()
        self.pages.put_nowait(self.lost)


def _said(e: BaseException) -> str:
    """What an exception says, for a reason shown to the app: its text, or its type's name when it has none
    (a ``wss://`` URL at a plain relay fails with a bare ``ConnectionResetError()``)."""
    return str(e) or type(e).__name__


#: the smallest ``interval`` (seconds): 0 made about 800 syncs a second
MIN_INTERVAL = 0.01
#: the smallest ``max_frame`` (bytes), as the relay's ``--max-frame``: a smaller one cannot hold a hello
MIN_FRAME = 64 * 1024


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_options(*, token: object, interval: object, batch_size: object, backoff: object, max_frame: object,
                   open_timeout: object) -> None:
    """``TypeError`` for an option of the wrong type, ``ValueError`` for one out of its range (each names the
    option and what it allows): a value that the client would otherwise spin or retry forever on."""
    if token is not None and not isinstance(token, str):
        raise TypeError(f"SyncClient token must be a str or None, not {type(token).__name__}")
    if interval is not None:
        if not _number(interval):
            raise TypeError(f"SyncClient interval must be a number of seconds or None, not {type(interval).__name__}")
        if not MIN_INTERVAL <= interval < float("inf"):  # type: ignore[operator]
            raise ValueError(f"SyncClient interval must be at least {MIN_INTERVAL} seconds (or None: no scheduled "
                             f"syncs), not {interval!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool):
        raise TypeError(f"SyncClient batch_size must be an int, not {type(batch_size).__name__}")
    if not 1 <= batch_size <= MAX_PUSH:
        raise ValueError(f"SyncClient batch_size must be 1 to {MAX_PUSH} (changes per push), not {batch_size}")
    if backoff is not None and not isinstance(backoff, Backoff):
        raise TypeError(f"SyncClient backoff must be a Backoff or None, not {type(backoff).__name__}")
    if not isinstance(max_frame, int) or isinstance(max_frame, bool):
        raise TypeError(f"SyncClient max_frame must be an int (bytes), not {type(max_frame).__name__}")
    if max_frame < MIN_FRAME:
        raise ValueError(f"SyncClient max_frame must be at least {MIN_FRAME} bytes (64 KiB), not {max_frame}")
    if not _number(open_timeout):
        raise TypeError(f"SyncClient open_timeout must be a number of seconds, not {type(open_timeout).__name__}")
    if not 0 < open_timeout < float("inf"):  # type: ignore[operator]
        raise ValueError(f"SyncClient open_timeout must be more than 0 seconds, not {open_timeout!r}")


class SyncClient:
    """Sync ``replica`` with the relay at ``url``. Use as ``async with SyncClient(...) as client:``."""

    def __init__(self, replica: Replica, url: str, *, token: str | None = None, interval: float | None = None,
                 batch_size: int = 200, backoff: Backoff | None = None, max_frame: int = MAX_FRAME,
                 open_timeout: float = 10.0) -> None:
        try:
            parse_uri(url)
        except InvalidURI:
            raise LocalError(f"{url!r} is not a websocket URL: use ws://HOST:PORT (or wss:// behind TLS)") from None
        _check_options(token=token, interval=interval, batch_size=batch_size, backoff=backoff, max_frame=max_frame,
                       open_timeout=open_timeout)
        self.replica = replica
        self.url = url
        self.token = token
        self.interval = interval
        self.batch_size = batch_size
        self.backoff = backoff or Backoff()
        self.max_frame = max_frame
        self.open_timeout = open_timeout
        self.status: SyncStatus = SyncStatus("offline", "not started")
        self._progress: SyncStatus | None = None  # the run under way's last progress event
        self.user: str | None = None
        self._listeners: list[Callable[[SyncStatus], None]] = []
        self._queue: deque[_Request] = deque()
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._fatal: SyncError | None = None
        self._fatal_told = False  # its ``failed`` event was emitted (``_tell_fatal``)
        self._tasks: list[asyncio.Task[None]] = []
        self._close_done: asyncio.Event | None = None  # made by the first close(), set once it is done
        self._session: _Session | None = None
        self._ids = itertools.count(1)
        # records whose changes the relay held back because they build on changes it did not have yet: a
        # sync runs again as soon as news of one of them arrives (the missing changes may have come with it)
        self._waiting: set[tuple[str, str]] = set()

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> SyncClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start connecting (and the scheduled syncs, with ``interval``) in the background; returns at once.
        A connection that comes runs a sync; one that fails is retried with ``backoff`` (``offline``
        events). Starting twice does nothing. ``async with`` calls it."""
        if not self._tasks:
            self._tasks.append(asyncio.create_task(self._connect_loop(), name="crdtsync-client"))
            if self.interval is not None:
                self._tasks.append(asyncio.create_task(self._schedule_loop(), name="crdtsync-schedule"))

    async def close(self) -> None:
        """Disconnect and stop; queued sync requests fail with ``SyncError("client closed")``. The app is
        told: a run under way ends with its ``failed`` event (its changes are pending again), then comes
        ``offline``, both with the reason "client closed" (``status`` stays that ``offline``)."""
        if self._close_done is not None:  # closed, or being closed by another call: that one tells the app
            await self._close_done.wait()
            return
        self._close_done = asyncio.Event()
        try:
            started = bool(self._tasks)
            running = next((r for r in self._queue if r.running), None)
            self._closed.set()
            self._wake.set()
            await self._stop_tasks()
            if running is not None and running.running and running in self._queue:  # cancelled mid-run
                self._emit(SyncStatus("failed", "client closed", collections=_names(running.collections)))
            self._fail_queue(SyncError("client closed"))
            if started:
                self._emit(SyncStatus("offline", "client closed"))
        finally:
            self._close_done.set()

    async def _stop_tasks(self) -> None:
        """Cancel the client's tasks and wait for them, for ``_CLOSE_LIMIT`` seconds at most. A task still
        running after ``_CLOSE_RETRY`` is cancelled again: a cancellation swallowed under it (Python 3.11's
        ``asyncio.wait_for`` did that, see ``crdtsync.timeouts``) must not hang ``close()``. One still running
        at the limit is left behind with an error logged; it starts no sync run and applies nothing received,
        since ``_closed`` is set (``_work_loop``, ``_connect_once``, ``_read_loop``)."""
        tasks, self._tasks = self._tasks, []
        loop = asyncio.get_running_loop()
        limit = loop.time() + _CLOSE_LIMIT
        pending = {t for t in tasks if not t.done()}
        while pending:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=min(_CLOSE_RETRY, max(0.0, limit - loop.time())))
            if pending and loop.time() >= limit:
                log.error("close(): %d task(s) still running after %.0f s, left behind: %r", len(pending),
                          _CLOSE_LIMIT, pending)
                break
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:  # seen, as ``await t`` did
                log.debug("client task %s ended with %r", t.get_name(), t.exception())

    @property
    def online(self) -> bool:
        """Whether the client is connected and welcomed by the relay now (a sync can run)."""
        return self._session is not None and self._session.welcome is not None and self._session.lost is None

    # -- status events -------------------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[SyncStatus], None]) -> Callable[[], None]:
        """Call ``callback`` with every status event; returns a function that unsubscribes. A ``callback``
        that is not callable raises ``TypeError``."""
        if not callable(callback):
            raise TypeError(f"subscribe takes a function of a SyncStatus, not {callback!r}")
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _emit(self, st: SyncStatus) -> None:
        if st.kind in ("offline", "online", "started", "completed", "failed"):
            self.status = st
            self._progress = None
        elif st.kind == "progress":
            self._progress = st
        for cb in list(self._listeners):
            try:
                cb(st)
            except Exception:
                log.exception("status listener %r failed", cb)

    # -- the queue -----------------------------------------------------------------------------------------

    async def sync_now(self, collections: Iterable[str] | None = None, *, timeout: float | None = None
                       ) -> SyncResult:
        """Queue a sync run (of some collections: sync units, or all) and wait for it to complete.

        ``collections`` is a list (any iterable) of collection names, or None for all; an empty one syncs
        nothing. A name the schema does not have raises ``ValidationError`` naming it (as ``Replica.get``
        does), and a bare str ``TypeError`` (``sync_now("accounts")`` would otherwise be read as the
        collections ``a``, ``c``, ``o`` ...: write ``sync_now(["accounts"])``); both before anything is queued.

        While offline the request waits for the connection. With ``timeout`` (seconds), ``SyncError`` says
        what this request waits on (say "offline: cannot reach the relay: ...", "its run is under way:
        progress upload 0 of 3", "queued behind 1 request, one under way"); the request stays
        queued and runs once the relay is back. Raises ``AuthError`` if the relay refused the token or the
        replica's user, ``SyncError`` if the request was discarded, the client closed, or the replica closed.
        """
        units = None if collections is None else self._units(collections)
        if self.replica.closed:
            self._replica_closed()
        if self._fatal is not None:
            raise self._fatal
        if self._closed.is_set():
            raise SyncError("client closed")
        await self.start()
        fut: asyncio.Future[SyncResult] = asyncio.get_running_loop().create_future()
        self._enqueue(units, fut)
        if timeout is None:
            return await fut
        try:
            return await wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            waiting = self._waiting_on(fut)
            for req in self._queue:  # the request stays; only this caller stops waiting for it
                if fut in req.futures:
                    req.futures.remove(fut)
            fut.cancel()
            raise SyncError(f"sync did not complete within {timeout:g} s ({waiting}); it stays queued") from None

    def _waiting_on(self, fut: asyncio.Future[SyncResult]) -> str:
        """What the request holding ``fut`` waits on, for ``sync_now``'s timeout: its run under way (and how
        far it got), the connection (why it is offline), or the requests queued ahead of it; never the
        outcome of an earlier run (``status`` may still be the ``completed`` of one)."""
        ahead = 0
        for req in self._queue:
            if fut in req.futures:
                if req.running:
                    return "its run is under way" + (f": {self._progress}" if self._progress is not None else "")
                break
            ahead += 1
        if not self.online:
            st = self.status
            return f"offline: {st.reason}" if st.kind == "offline" and st.reason else "connecting to the relay"
        if ahead:
            running = self._queue[0].running
            return f"queued behind {ahead} request{'s' if ahead > 1 else ''}" + (", one under way" if running else "")
        return "queued, about to start"

    def _units(self, collections: Iterable[str]) -> frozenset[str]:
        """``sync_now``'s sync units, checked against the schema (see there)."""
        if isinstance(collections, str | bytes):
            raise TypeError(f"sync_now() takes a list of collection names, not the {type(collections).__name__} "
                            f"{collections!r}: write sync_now([{collections!r}])")
        names = frozenset(collections)
        known = self.replica.schema.collections
        unknown = sorted((n for n in names if not isinstance(n, str) or n not in known), key=repr)
        if unknown:
            raise ValidationError(", ".join(map(str, unknown)), None, None,
                                  f"unknown collection{'s' if len(unknown) > 1 else ''}; the schema has "
                                  f"{sorted(known)}")
        return names

    def _enqueue(self, collections: frozenset[str] | None, fut: asyncio.Future[SyncResult] | None) -> None:
        for req in self._queue:
            if req.collections == collections and not req.running:
                if fut is not None:
                    req.futures.append(fut)
                return
        self._queue.append(_Request(collections, [fut] if fut is not None else []))
        self._wake.set()

    def pending_requests(self) -> int:
        return len(self._queue)

    def discard_queue(self) -> int:
        """Drop the sync requests that have not started; their ``sync_now`` raise ``SyncError``."""
        keep = [r for r in self._queue if r.running]
        dropped = [r for r in self._queue if not r.running]
        self._queue = deque(keep)
        for r in dropped:
            for f in r.futures:
                if not f.done():
                    f.set_exception(SyncError("sync request discarded"))
        return len(dropped)

    def _fail_queue(self, err: SyncError) -> None:
        while self._queue:
            for f in self._queue.popleft().futures:
                if not f.done():
                    f.set_exception(err)

    # -- connection ----------------------------------------------------------------------------------------

    def _replica_closed(self) -> None:
        """The replica was closed under the client: stop for good, as for a refused token (each connection
        would only meet the closed store again)."""
        if self._fatal is None:
            self._fatal = SyncError(f"the replica was closed ({self.replica.device}): close the SyncClient "
                                    "before its Replica")
            if not self._closed.is_set():  # told now, before ``sync_now`` raises it: an app that closes the
                self._tell_fatal()         # client right after would not see an event a loop turn later
        self._wake.set()  # an idle worker ends (``_work_loop``), and with it the connection

    async def _connect_loop(self) -> None:
        while not self._closed.is_set():
            reason = "closed"
            if not self.replica.closed:
                try:
                    reason = await self._connect_once()
                except StoreClosed:  # the replica's store was closed under it
                    self._replica_closed()
                except Exception as e:  # a bug or an unforeseen transport error: stay alive, report, retry
                    log.exception("connecting to %s failed", self.url)
                    reason = f"cannot connect: {e!r}"
            if self.replica.closed:
                self._replica_closed()
            if self._fatal is not None or self._closed.is_set():
                break
            self._emit(SyncStatus("offline", reason))
            delay = self.backoff.next()
            # the first failure after being online is worth a warning; the retries that follow only debug
            log.log(logging.WARNING if self.backoff.attempt <= 1 else logging.DEBUG,
                    "offline (%s); retrying %s in %.1f s", reason, self.url, delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(self._closed.wait(), delay)
        if self._fatal is not None:
            self._tell_fatal()
            self._fail_queue(self._fatal)

    def _tell_fatal(self) -> None:
        """Log the error that stopped the client and emit its ``failed`` event, once."""
        if self._fatal is not None and not self._fatal_told:
            self._fatal_told = True
            log.error("sync stopped: %s", self._fatal)
            self._emit(SyncStatus("failed", str(self._fatal)))

    async def _connect_once(self) -> str:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            ws = await connect(self.url, additional_headers=headers, max_size=self.max_frame + 1024,
                               open_timeout=self.open_timeout, compression=None)
        except (OSError, InvalidHandshake, TimeoutError) as e:
            return f"cannot reach the relay: {_said(e)}"
        session = _Session(ws, self.max_frame)
        self._session = session
        reader = asyncio.create_task(self._read_loop(session))
        worker: asyncio.Task[None] | None = None
        try:
            await session.send(Hello(self.replica.device))
            welcome = await wait_for(asyncio.shield(session.welcomed), self.open_timeout)
            if self._closed.is_set():  # close() under way: no new session
                return "closed"
            self.user = welcome.user
            if welcome.user not in ("*", self.replica.user):
                # every change names its user; the relay would refuse them all as impersonation
                self._fatal = AuthError(f"the token belongs to user {welcome.user!r}, but this replica writes "
                                        f"as {self.replica.user!r}: open the replica with user={welcome.user!r}")
                return str(self._fatal)
            behind = self._behind(welcome.last)
            if behind is not None:
                self._fatal = behind
                return str(behind)
            self._forget_unreadable(welcome)
            self.backoff.reset()
            log.info("online: device %s of %s connected to %s", self.replica.device,
                     "an open relay" if welcome.user == "*" else repr(welcome.user), self.url)
            self._emit(SyncStatus("online"))
            self._enqueue(None, None)  # the connection came (back): sync
            worker = asyncio.create_task(self._work_loop(session))
            await asyncio.wait([reader, worker], return_when=asyncio.FIRST_COMPLETED)
            if worker.done() and not worker.cancelled() and worker.exception() is not None:
                log.error("sync worker failed", exc_info=worker.exception())
                session.fail(f"sync worker failed: {worker.exception()!r}")
        except (_Lost, TimeoutError) as e:
            session.fail(str(e) or "no welcome from the relay")
        finally:
            try:
                # asyncio.wait, not ``await t`` under suppress(CancelledError): that would also swallow a
                # cancellation of this task (close()) arriving meanwhile
                children = [t for t in (reader, worker) if t is not None and not t.done()]
                for t in children:
                    t.cancel()
                if children:
                    await asyncio.wait(children)
                for t in children:
                    if not t.cancelled():
                        t.exception()  # seen: no "Task exception was never retrieved"
                with contextlib.suppress(Exception):
                    await ws.close()
            finally:
                if ws.close_code is None:  # cancelled (again) before the close completed
                    ws.transport.abort()
                self._session = None
        return str(session.lost) if session.lost is not None else "closed"

    async def _read_loop(self, session: _Session) -> None:
        ws = session.ws
        reason = "connection closed"
        try:
            async for message in ws:
                if self._closed.is_set():  # nothing received is applied once close() began
                    break
                session.conn.receive_data(message if isinstance(message, bytes) else message.encode())
                for ev in session.conn.events_received():
                    self._on_event(session, ev)
                for data in session.conn.data_to_send():
                    await ws.send(data)
                if session.conn.state is State.CLOSED:
                    await ws.close(session.conn.close_code or 1000, session.conn.close_reason or "")
                    reason = f"closed: {session.conn.close_code} {session.conn.close_reason}"
                    break
        except ConnectionClosed:
            pass
        except StoreClosed:  # a live update found the replica closed
            self._replica_closed()
            reason = str(self._fatal)
        rcvd = ws.close_code
        if rcvd is not None and session.conn.state is not State.CLOSED:
            reason = f"relay closed the connection: {rcvd} {ws.close_reason or ''}".strip()
        if rcvd == 4404:
            self._fatal = SyncError(f"{self.url} is not a crdtsync endpoint: {ws.close_reason} (use the relay's "
                                    "root URL, ws://HOST:PORT)")
        elif rcvd in _FATAL:
            self._fatal = AuthError(f"the relay refused this device: {rcvd} {ws.close_reason}")
        session.fail(reason)

    def _on_event(self, session: _Session, ev: Event) -> None:
        if isinstance(ev, Welcome):
            session.welcome = ev
            if not session.welcomed.done():
                session.welcomed.set_result(ev)
        elif isinstance(ev, Ack):
            fut = session.acks.pop(ev.id, None)
            if fut is not None and not fut.done():
                fut.set_result(ev)
        elif isinstance(ev, Changes):
            session.pages.put_nowait(ev)
        elif isinstance(ev, Live):
            if session.pages.empty():
                self._apply_live(ev.items)
            else:
                # pages received and not applied yet: the protocol core counts the pull as answered by
                # now, and a cursor stored with this frame would pass them (lost if the device stopped
                # before applying them). ``_download`` applies it after them.
                session.pages.put_nowait(ev)
        elif isinstance(ev, ProtocolError):
            log.warning("protocol error from the relay: %s", ev.reason)
            if session.welcome is None and self._fatal is None:
                # before any welcome: not the crdtsync protocol at all (a Yjs room's URL, another server);
                # reconnecting would only meet it again
                self._fatal = SyncError(f"{self.url} does not answer as a crdtsync relay ({ev.reason}): use "
                                        "the relay's root URL, ws://HOST:PORT, not a /yjs/ room")
        elif isinstance(ev, Bye):
            log.info("relay said goodbye: %d %s", ev.code, ev.reason)

    # -- sync runs -----------------------------------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        assert self.interval is not None
        while not self._closed.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(self._closed.wait(), self.interval)
            if self.online:
                self._enqueue(None, None)

    async def _work_loop(self, session: _Session) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
                if self._closed.is_set() or self._fatal is not None:
                    return
            if self._closed.is_set():  # no run starts once close() began
                return
            req = self._queue[0]
            req.running = True
            try:
                result = await self._run(session, req.collections)
            except StoreClosed:  # the client stops (``_connect_loop``), failing every request
                req.running = False
                self._replica_closed()
                return
            except _Lost as e:  # the request stays queued and runs again after reconnecting
                req.running = False
                session.fail(str(e))
                self._emit(SyncStatus("failed", str(e), collections=_names(req.collections)))
                return
            except SyncError as e:  # refused for good (e.g. a sync unit the user may not read)
                self._queue.popleft()
                for f in req.futures:
                    if not f.done():
                        f.set_exception(e)
                self._emit(SyncStatus("failed", str(e), collections=_names(req.collections)))
                continue
            except Exception as e:
                req.running = False
                self._emit(SyncStatus("failed", repr(e), collections=_names(req.collections)))
                raise
            self._queue.popleft()
            for f in req.futures:
                if not f.done():
                    f.set_result(result)
            self._emit(SyncStatus("completed", collections=result.collections, result=result))

    async def _run(self, session: _Session, collections: frozenset[str] | None) -> SyncResult:
        names = _names(collections)
        assert session.welcome is not None
        readable = session.welcome.read
        refused = sorted(c for c in collections or () if readable != "*" and c not in readable)
        if refused:
            raise SyncError(f"user {session.welcome.user!r} may not read {', '.join(map(repr, refused))}")
        self._emit(SyncStatus("started", collections=names))
        self._retry_on_new_schema(session.welcome)
        touched: set[tuple[str, str]] = set()
        changed: dict[tuple[str, str], Record] = {}  # each record as its last merge left it
        received = 0
        reset = False
        if self._cursor()[0] != session.welcome.relay and self.replica.outgoing(collections, limit=1):
            # A first sync with this relay is a full resync. Take it before uploading, so the relay does not
            # send this device's own pending changes back to it; the pull after the upload is then a delta.
            received, reset, _ = await self._download(session, collections, changed, live=False)
        uploaded, rejected, held = await self._upload(session, collections, touched)
        n, again, cursor = await self._download(session, collections, changed, live=collections is None)
        received, reset = received + n, reset or again
        self._retry_waiting(changed.keys())
        touched |= changed.keys()
        conflicts = 0
        for c, rid in sorted(touched):  # conflict events come before "completed", one per record
            # a record merged by the download is as apply_remote returned it (the upload only confirms
            # changes, it changes no field): no second read of its row
            rec = changed[(c, rid)] if (c, rid) in changed else self.replica.get(c, rid)
            if rec is not None and rec.conflicts:
                conflicts += 1
                self._emit(SyncStatus("conflict", collection=c, record=rid, conflicts=rec.conflicts))
        result = SyncResult(names, uploaded, rejected, held, len(changed), conflicts, reset, cursor, received)
        log.info("sync %s: %s", "of " + ", ".join(names) if names else "run", result)
        return result

    def _retry_on_new_schema(self, welcome: Welcome) -> None:
        """The relay's schema changed since the last sync (it was restarted with a new one): put the changes
        it refused as ``invalid`` or ``gone`` back in the queue, for this run to send again. A device
        upgraded before its relay had a new field refused as unknown, and kept it as an error until the
        user called ``retry()``. Refused again, they are errors again, as before. Nothing without
        WELCOME's ``schema`` (an older relay); the first fingerprint a device gets counts as a change."""
        if welcome.schema is None:
            return
        now = welcome.schema.encode()
        if self.replica.get_meta(_SCHEMA) == now:
            return
        # (none stored counts as a change: the first relay to send one is likely the one just upgraded)
        again = sorted({(p.collection, p.record) for p in self.replica.pending()
                        if p.status == "error" and p.error is not None and p.error[0] in ("invalid", "gone")})
        for c, rid in again:
            self.replica.retry(c, rid)
        if again:
            log.info("the relay's schema changed: retrying the refused changes of %d record(s)", len(again))
        self.replica.set_meta(_SCHEMA, now)

    async def _upload(self, session: _Session, collections: frozenset[str] | None,
                      touched: set[tuple[str, str]]) -> tuple[int, int, int]:
        r = self.replica
        total = len(r.outgoing(collections))
        done = uploaded = rejected = held = 0
        waiting: set[tuple[str, str]] = set()  # records whose changes the relay held: sent again next run
        while True:
            batch = self._fit(r.outgoing(collections, limit=self.batch_size, skip=waiting), session)
            if batch is None:  # a change too large for any frame was set aside as an error
                rejected += 1
                continue
            if not batch:
                break
            ids = [pc.id for pc, _ in batch]
            r.mark_syncing(ids)
            push = Push(next(self._ids), tuple(Change(pc.id, pc.collection, pc.record, u) for pc, u in batch))
            fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
            session.acks[push.id] = fut
            try:
                await session.send(push)
                ack = await fut
            except BaseException:
                r.mark_pending(ids)
                raise
            r.acknowledge(ack.ok)
            by_id = {pc.id: pc for pc, _ in batch}
            touched.update((by_id[i].collection, by_id[i].record) for i in ack.ok)
            for rej in ack.rejected:
                r.reject(rej.change_id, rej.code, rej.reason)
                pc = by_id[rej.change_id]
                self._emit(SyncStatus("error", rej.reason, collection=pc.collection, record=pc.record,
                                      change_id=rej.change_id, code=rej.code))
            r.hold(ack.held, dict(ack.waits))
            for cid, why in ack.waits:
                pc = by_id[cid]
                self._emit(SyncStatus("held", why, collection=pc.collection, record=pc.record, change_id=cid))
            waiting.update((by_id[i].collection, by_id[i].record) for i in ack.held if i in by_id)
            uploaded += len(ack.ok)
            rejected += len(ack.rejected)
            held += len(ack.held)
            done += len(batch)
            total = max(total, done)
            self._emit(SyncStatus("progress", phase="upload", done=done, total=total))
        blocked = {(p.collection, p.record) for p in r.pending() if p.status == "error"}
        self._waiting = waiting - blocked  # those held behind a rejected change wait for the user instead
        return uploaded, rejected, held

    def _forget_unreadable(self, welcome: Welcome) -> None:
        """The records of collections the token may not read (its read access was revoked) leave the device,
        as records leaving a ``where`` scope do (``Replica.evict``: those with pending changes stay until the
        user discards them), and so does their cursor: if access comes back, they are downloaded whole."""
        if welcome.read == "*":
            return
        gone = [c.name for c in self.replica.schema if c.name not in welcome.read]
        relay, cursors, marks = self._cursor_state()
        dropped = [c for c in gone if c in cursors]
        if dropped:
            for c in dropped:
                del cursors[c]
            self.replica.set_meta(_CURSOR, self._cursor_meta(relay or welcome.relay, cursors, marks)[_CURSOR])
        for c in gone:
            ids = self.replica.record_ids(c)
            if ids:
                removed = self.replica.evict((c, rid) for rid in ids)
                log.warning("%s: no longer readable with this token: %d record(s) removed from the device", c,
                            len(removed))

    def _behind(self, last: int) -> StoreBehind | None:
        """``StoreBehind`` if the relay holds a later change of this device (``last``, its WELCOME's) than any
        this store had acknowledged, and not one it still holds (pending, its ack lost; or discarded)."""
        acked = self.replica.last_acknowledged()
        if acked is None or last <= acked:
            return None  # (a store that never synced has fresh Yjs client ids: nothing of it can collide)
        if any(p.id == last for p in self.replica.pending()) or last in self.replica.returns():
            return None
        return StoreBehind(
            f"the relay has changes of device {self.replica.device!r} up to change {last}, but this store had "
            f"only up to {acked} acknowledged: it was restored from a backup or copied, or another "
            "installation uses this device id. Syncing would lose changes; open a new store (a new device id) "
            "and re-enter what pending() lists")

    def _fit(self, batch: list[tuple[PendingChange, bytes]], session: _Session
             ) -> list[tuple[PendingChange, bytes]] | None:
        """The longest prefix of ``batch`` that fits in half a frame (the smaller of this client's
        ``max_frame`` and the relay's); None if its first change can never be sent (it is then rejected
        locally, kept as ``error`` for the user to export or discard)."""
        relay_max = session.welcome.max_frame if session.welcome is not None else self.max_frame
        limit = min(self.max_frame, relay_max)
        budget = limit // 2
        size = 0
        for n, (pc, update) in enumerate(batch):
            size += len(update) + 64 + len(pc.collection) + len(pc.record)
            if size > budget:
                if n == 0:
                    whose = "this client's" if limit == self.max_frame else "the relay's"
                    reason = (f"the change is {len(update)} bytes, more than a frame may carry ({whose} limit is "
                              f"{limit} bytes a frame, half of it for one push)")
                    self.replica.reject(pc.id, "invalid", reason)
                    self._emit(SyncStatus("error", reason, collection=pc.collection, record=pc.record,
                                          change_id=pc.id, code="invalid"))
                    return None
                return batch[:n]
        return batch

    def _cursor(self) -> tuple[str | None, dict[str, int]]:
        relay, cursors, _ = self._cursor_state()
        return relay, cursors

    def _cursor_state(self) -> tuple[str | None, dict[str, int], dict[str, str]]:
        """The relay id the cursors belong to, the cursor of each collection, and the fingerprint of the
        ``where`` limit each collection was last downloaded under (WELCOME's ``scopes``; none: unlimited)."""
        raw = self.replica.get_meta(_CURSOR)
        if raw is None:
            return None, {}, {}
        d = orjson.loads(raw)
        return (d.get("relay"), {str(k): int(v) for k, v in d.get("c", {}).items()},
                {str(k): str(v) for k, v in d.get("s", {}).items()})

    @staticmethod
    def _cursor_meta(relay: str, cursors: dict[str, int], marks: dict[str, str]) -> dict[str, bytes]:
        """The cursor as replica metadata, to store with the updates it covers (``apply_remote(meta=)``)."""
        d: dict[str, Any] = {"relay": relay, "c": cursors}
        if marks:
            d["s"] = marks
        return {_CURSOR: orjson.dumps(d)}

    @staticmethod
    def _rescoped(welcome: Welcome, stored_relay: str | None, cursors: dict[str, int], marks: dict[str, str],
                  wanted: Iterable[str]) -> set[str]:
        """The wanted collections whose ``where`` limit changed since this device last downloaded them from
        this relay (a tokens reload): their fingerprint in WELCOME's ``scopes`` differs from the one stored
        with the cursor (a cursor stored before fingerprints were, or by a relay that sends none, counts as
        unlimited). Unknown when the relay sends no ``scopes`` (an older relay): none then."""
        if welcome.scopes is None or stored_relay != welcome.relay:
            return set()
        return {c for c in wanted if (c in cursors or c in marks) and marks.get(c, "") != welcome.scopes.get(c, "")}

    async def _download(self, session: _Session, collections: frozenset[str] | None,
                        changed: dict[tuple[str, str], Record], *, live: bool) -> tuple[int, bool, int]:
        """Pull what changed since the cursor; returns (updates received, whether it was a full resync, the
        new cursor). The records the updates changed are put in ``changed``, as merged."""
        assert session.welcome is not None
        welcome = session.welcome
        relay_id = welcome.relay
        stored_relay, cursors, marks = self._cursor_state()
        readable = welcome.read
        wanted = sorted(collections) if collections is not None \
            else [c.name for c in self.replica.schema if readable == "*" or c.name in readable]
        # collections whose ``where`` limit changed: a full resync, after which what it did not bring is
        # evicted (``_evict_unsent``)
        rescope = self._rescoped(welcome, stored_relay, cursors, marks, wanted)
        # a full resync from the relay log the cursors come from, whole (none past its head: a relay whose
        # database lost changes, restored from a backup, has its head below them) sends every record of the
        # scope the relay holds: a record of a ``where``-limited collection it does not bring has left the
        # scope (the news of it was compacted away, or skipped with the delta it replaces), and is evicted
        # too. Not after a resync from another relay log (a first sync, a relay started on an empty
        # database) or one that lost changes: what it did not send may be the only copy of a record.
        limited = {c for c in wanted if welcome.scopes is not None and c in welcome.scopes}
        whole_log = stored_relay == relay_id and all(v <= welcome.head for v in cursors.values())
        if stored_relay != relay_id:
            cursors, marks = {}, {}
        for c in rescope:
            cursors.pop(c, None)
        if welcome.scopes is not None:  # stored with the cursors: the limits this download is made under
            marks = {c: v for c, v in marks.items() if c not in wanted}
            marks.update((c, welcome.scopes[c]) for c in wanted if c in welcome.scopes)
        since = min((cursors.get(c, 0) for c in wanted), default=0)
        # a collection with no cursor while others have one (read access back, or new in the schema) needs
        # a full resync: a delta from 0 would skip the log compacted away, and this device's own changes
        ask_reset = bool(rescope) or (bool(cursors) and any(c not in cursors for c in wanted))
        returns = self.replica.returns(MAX_RETURNS)  # changes discarded here that the relay may have
        # the collections named even when all are wanted: those the relay has and this app's schema lacks (a
        # newer app's, in a rolling upgrade) are not sent, to be set aside here record by record; the app
        # gets them whole once upgraded (a collection with no cursor: a full resync, above)
        pull = Pull(next(self._ids), since, None if ask_reset else stored_relay, tuple(wanted), live=live,
                    returns=tuple(returns))
        await session.send(pull)
        received = 0
        reset = False
        to = since
        kept: set[tuple[str, str]] = set()  # the records of ``watched`` collections the resync brought
        watched = rescope | limited
        session.live_records = set()
        try:
            while True:
                page = await session.pages.get()
                if isinstance(page, _Lost):
                    raise page
                if isinstance(page, Live):  # arrived behind a page applied before it
                    self._apply_live(page.items)
                    continue
                reset = reset or page.reset
                cursor = None
                # (a pull asking for a resync gets only resync pages; one the relay turned into a resync, the
                # log compacted under it, may have delta pages first: what they brought counts for nothing)
                if watched and (page.reset or rescope):
                    kept.update((i.collection, i.record) for i in page.items
                                if i.update and i.collection in watched)
                if page.to is not None:  # stored in the same commit as the page's updates
                    to = page.to
                    # the resync's last page (the only one with a cursor): what it did not bring goes first
                    gone = rescope | (limited if page.reset and whole_log else set())
                    if gone:
                        self._evict_unsent(gone, kept | session.live_records, changed_limit=rescope)
                    _, cursors = self._cursor()
                    for c in wanted:
                        cursors[c] = to if page.reset else max(cursors.get(c, 0), to)
                    cursor = self._cursor_meta(relay_id, cursors, marks)
                changed.update(((rec.collection, rec.id), rec) for rec in self._apply(page.items, cursor))
                received += len(page.items)
                self._emit(SyncStatus("progress", phase="download", done=page.done, total=page.total))
                if not page.more:
                    # answered (what came back of them is in, with its page): by a delta pull, which sends
                    # them back whatever the collections, or by a full resync of every collection
                    if not reset or collections is None:
                        self.replica.returned(returns)
                    self._apply_queued_live(session)
                    return received, reset, to
        finally:
            session.live_records = None

    def _evict_unsent(self, collections: set[str], kept: set[tuple[str, str]], *, changed_limit: set[str]) -> None:
        """After a full resync of ``where``-limited collections (those in ``changed_limit`` because their limit
        changed; the others because it replaced a delta, from the same relay log): their records it did not
        bring are outside the scope, and leave the device (``Replica.evict``: those with pending changes stay
        until the user discards them; each removal is a ``ChangeEvent`` with ``record=None``). ``kept``: the
        records the resync brought, and those live updates brought meanwhile. Done before the cursor (and a
        new limit's fingerprint) is stored: if it is cut short, the next sync resyncs them again."""
        for c in sorted(collections):
            gone = [(c, rid) for rid in self.replica.record_ids(c) if (c, rid) not in kept]
            removed = self.replica.evict(gone) if gone else []
            if removed:
                why = "outside this token's changed limit" if c in changed_limit else "left this token's scope"
                log.warning("%s: %s: %d record(s) removed from the device", c, why, len(removed))

    def _apply(self, items: tuple[Item, ...], cursor: dict[str, bytes] | None = None) -> list[Record]:
        """Merge a page: all at once, or item by item if one is bad (it is reported and skipped). The
        ``cursor`` (``_cursor_meta``) is stored in the same commit, or after the items one by one. Items with
        an empty update say a record left the device's scope: it is evicted first (before the cursor moves
        past the news), unless it holds pending changes."""
        if any(not i.update for i in items):
            self.replica.evict((i.collection, i.record) for i in items if not i.update)
            items = tuple(i for i in items if i.update)
        if not items and not cursor:
            return []
        try:
            return self.replica.apply_remote(((i.collection, i.record, i.update) for i in items), meta=cursor)
        except (MalformedUpdate, RemoteValidationError):
            out: list[Record] = []
            refused: list[str] = []
            for i in items:
                try:
                    out += self.replica.apply_remote([(i.collection, i.record, i.update)])
                except (MalformedUpdate, RemoteValidationError) as e:
                    # kept aside, not lost: an update of a collection this app's schema lacks (one added in
                    # a rolling upgrade), applied once the replica opens with a schema that has it
                    # (``retry_set_aside``); or malformed content, kept for the record
                    self.replica.set_aside(i.collection, i.record, i.update)
                    refused.append(f"{i.collection}/{i.record}: {_said(e)}")
                    self._emit(SyncStatus("error", f"update from the relay refused, set aside: {_said(e)}",
                                          collection=i.collection, record=i.record, code="invalid"))
            # one line a page, not one a record: a rolling upgrade (devices on the older schema refusing
            # a collection upgraded ones write) is expected, and an ERROR per update flooded crash reporting
            if refused:
                log.warning("set aside %d update(s) from the relay that this replica refuses (of a collection "
                            "its schema lacks, or malformed); opening it with a schema that accepts them "
                            "applies them. First: %s", len(refused), refused[0])
            for name, value in (cursor or {}).items():
                self.replica.set_meta(name, value)
            return out

    def _apply_queued_live(self, session: _Session) -> None:
        """Apply the LIVE frames that arrived behind the last page of a pull (it is applied now)."""
        while not session.pages.empty():
            ev = session.pages.get_nowait()
            if not isinstance(ev, Live):  # the connection's loss: left for the next pull to meet
                session.pages.put_nowait(ev)
                return
            self._apply_live(ev.items)

    def _apply_live(self, items: tuple[Item, ...]) -> None:
        if not items or self._session is None or self._session.welcome is None:
            return
        cursor = None
        # while a pull is paging through older entries, moving the cursor past them now would skip them if
        # the connection dropped before its last page (its own cursor updates cover these items)
        if self._session.conn.pull_in_flight is None:
            top = max(i.seq for i in items)
            _, cursors, marks = self._cursor_state()
            readable = self._session.welcome.read
            # only the collections the live stream covers (every readable one): a cursor for another would
            # make its first download once it becomes readable a delta, which skips what came before
            for c in self.replica.schema:
                if readable == "*" or c.name in readable:
                    cursors[c.name] = max(cursors.get(c.name, 0), top)
            cursor = self._cursor_meta(self._session.welcome.relay, cursors, marks)
        if self._session.live_records is not None:
            self._session.live_records.update((i.collection, i.record) for i in items if i.update)
        for rec in self._apply(items, cursor):
            if rec.conflicts:
                self._emit(SyncStatus("conflict", "live update", collection=rec.collection, record=rec.id,
                                      conflicts=rec.conflicts))
        self._retry_waiting((i.collection, i.record) for i in items)

    def _retry_waiting(self, records: Iterable[tuple[str, str]]) -> None:
        """News of a record whose changes the relay held back: queue a sync to send them again."""
        if self._waiting and not self._waiting.isdisjoint(records):
            self._waiting.clear()
            self._enqueue(None, None)


def _names(collections: frozenset[str] | None) -> tuple[str, ...] | None:
    return None if collections is None else tuple(sorted(collections))

