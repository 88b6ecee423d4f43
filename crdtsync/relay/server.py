"""The relay: a websockets server around the protocol core and the relay log.

Each connection is authenticated from its token (``Authorization: Bearer ...`` or ``?token=``) before
anything is read; a bad or missing token gets close code 4401. Pushes from every connection go through one
writer task, which validates and applies them in order, commits them to the store in groups (one durable
commit for many changes; ``Relay._begin_commit`` tells where its parts run), and only then acknowledges
them and fans them out to the connected devices whose scope covers them. Readers (delta sync) only see
committed changes.

Paths: ``/`` (or ``/sync``) speaks the crdtsync protocol; ``/yjs/<room>`` is handed to the plain Yjs rooms
(``crdtsync.relay.yjs``) after the room grants are checked; a ``/yjs/`` client offering subprotocols gets its
first one. A plain HTTP GET of ``/`` or ``/health`` is answered 200 "okay" (health checks), whatever the
load, while the store works (503 once it failed: ``Relay.store_failed``). At most ``max_connections``
websockets (devices and Yjs clients together) are open at once: one more is refused at its handshake with
503 (``crdtsync.relay.admission``).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ..errors import StoreClosed, StoreError, StoreFull
from ..protocol.events import (
    Ack,
)
from ..protocol.frames import MAX_FRAME
from ..schema import Schema
from ..store.base import Batch, ByteStore, is_full, store_path
from .admission import AcceptErrors, ConnectionCap, LogThrottle, refuse
from .auth import Grant, Tokens
from .fanout import LiveFrames
from .log import Accepted, Outcome, RelayLog
from .session import PushJob, Session

__all__ = ["Limits", "Relay", "is_store_failure"]

log = logging.getLogger("crdtsync.relay")


def _health(ws: ServerConnection, request: Request) -> Response | None:
    """A plain HTTP GET of ``/`` or ``/health`` (a load balancer's health check) gets 200 "okay"."""
    if request.headers.get("Upgrade", "").lower() != "websocket" and urlsplit(request.path).path in ("/", "/health"):
        return ws.respond(HTTPStatus.OK, "okay")
    return None


def is_store_failure(exc: BaseException) -> bool:
    """Whether an error raised through a store call is the store's own failure (its database gone, locked,
    unreadable, or the store closed) rather than a bug in what asked: SQLite's and psycopg's errors and
    crdtsync's store errors. Reads are no more likely than commits to work again in the same process (a
    PostgreSQL connection once lost stays lost: ``PostgresStore``), so either stops the relay."""
    if isinstance(exc, StoreClosed | StoreError | sqlite3.Error):
        return True
    return type(exc).__module__.split(".")[0] == "psycopg"


def _subprotocol(ws: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """A Yjs client's first offered subprotocol (WebsocketProvider's ``protocols``): a browser gives up on a
    server that picks none. Not a token source: the token goes in ``?token=`` or ``Authorization``."""
    path = ws.request.path if ws.request is not None else ""
    return offered[0] if offered and path.startswith("/yjs/") else None


@dataclass(frozen=True)
class Limits:
    """Per-connection limits. A connection over ``rate`` frames per second (bursts of ``burst``) is slowed
    down, not dropped, a device's and a Yjs client's alike; a device whose live queue fills up (a reader
    slower than the writers) is closed with 4408 and catches up by delta sync when it reconnects: nothing is
    ever dropped silently. A device connection that sends no HELLO within ``hello_timeout`` seconds of
    opening is closed with 4408 (a Yjs client may stay idle: it may just be reading its room)."""

    max_frame: int = MAX_FRAME
    rate: float = 500.0
    burst: int = 1000
    send_queue: int = 1024
    page_items: int = 500
    group_changes: int = 2000  # a write group stops growing here (plus at most one push of MAX_PUSH changes)
    # a store's commit that only has a local fsync left is finished on the event loop while fsyncs take
    # less than this on average (seconds; 0: always in a thread); see ``Relay._begin_commit``
    inline_sync: float = 0.002
    hello_timeout: float = 10.0
    # seconds between two reads that check the store works while the relay is idle (``Relay._check_store``;
    # 0: none): a store that failed then stops the relay before a device finds out
    store_check: float = 10.0

    def __post_init__(self) -> None:
        if not self.rate > 0 or self.burst < 1 or self.max_frame < 1024 or self.send_queue < 1 \
                or not self.hello_timeout > 0 or not self.store_check >= 0:
            raise ValueError(f"bad relay limits: {self} (rate > 0, burst >= 1, max_frame >= 1024, send_queue >= 1, "
                             "hello_timeout > 0, store_check >= 0)")


@dataclass
class _Group:
    """A write group: its pushes, what became of each, the batch holding the accepted changes, and the
    commit of that batch once started."""

    jobs: list[PushJob]
    outcomes: list[Outcome]
    batch: Batch
    changes: int = 0
    commit: asyncio.Future[None] | None = None


def _load_yjs() -> Any:
    try:
        return importlib.import_module("crdtsync.relay.yjs")
    except ImportError:
        return None


class Relay:
    """A crdtsync relay over a byte store. ``await relay.start(host, port)``, then ``await relay.stop()``."""

    def __init__(self, store: ByteStore, schema: Schema, tokens: Tokens, *, limits: Limits = Limits(),
                 keep_log: int = 100_000, cache_mb: float = 256, max_connections: int | None = None) -> None:
        """``cache_mb``: the records kept in memory, in MB of their encoded updates, for the writer and the
        readers together (each holds half; records with changes being committed stay beyond it). The
        memory they take is of that order: see docs/sync.md. ``max_connections``: websockets open at once,
        devices and Yjs clients together (None: the process's open-files limit less a margin,
        ``admission.default_max_connections``)."""
        self.store = store
        self.schema = schema
        #: told to clients (WELCOME's ``schema``), which retry what it refused when it changes
        self.schema_fingerprint = hashlib.blake2b(orjson.dumps(schema.to_dict(), option=orjson.OPT_SORT_KEYS),
                                                  digest_size=8).hexdigest()
        self.limits = limits
        self._sync_time = 0.0  # seconds, a moving average of the commits' fsyncs (``_begin_commit``)
        self.log = RelayLog(store, schema, keep=keep_log, cache_size=4096, cache_bytes=int(cache_mb * 2**20) // 2,
                            max_record=limits.max_frame // 2)
        self.sessions: set[Session] = set()
        self._room_conns: dict[ServerConnection, tuple[str | None, str, bool]] = {}  # token, room, can write
        self._closing: set[asyncio.Future[None]] = set()
        self.tokens = tokens
        # the pushes waiting for the writer, in arrival order (None: stop); ``_arrived`` is the future the
        # writer waits on while there are none (a plain deque: one job per push frame, the hot path)
        self._jobs: deque[PushJob | None] = deque()
        self._arrived: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        self._server: Server | None = None
        self._stopped = asyncio.Event()
        #: why the relay stopped by itself (its store failed: ``store_failed``), None while it runs or after ``stop()``
        self.failure: BaseException | None = None
        self.device_binding = asyncio.Lock()  # device ids are bound to users one at a time
        #: the connections open (``len(relay.connections)``) and the cap on them
        self.connections = ConnectionCap(max_connections)
        self._refused_tokens = LogThrottle("refused connections with a missing or unknown token")
        self._refused_rooms = LogThrottle("refused connections to rooms their token may not join")
        self._accept_errors: AcceptErrors | None = None  # the loop's exception handler while it runs
        yjs = _load_yjs()
        self.rooms: Any = yjs.YjsRooms(store, max_message=self.limits.max_frame, rate=self.limits.rate,
                                       burst=self.limits.burst, connections=self.connections) \
            if yjs is not None else None
        self.address: tuple[str, int] = ("", 0)

    @property
    def tokens(self) -> Tokens:
        return self._tokens

    @tokens.setter
    def tokens(self, tokens: Tokens) -> None:
        """Replace the token table (SIGHUP reloads it): the log learns which fields ``where`` limits use, and
        every connection whose token's grant changed is closed (``_regrant``)."""
        self._tokens = tokens
        self.log.scope_fields = tokens.scope_fields()
        self._regrant()

    def _regrant(self) -> None:
        """Hold every open connection to the current token table: one whose token is gone is closed with
        4401 (the device stops: its token was revoked), one whose grant changed with 1012 (it reconnects at
        once and works under the new grant, as after a restart of the relay with the new file)."""
        closed = 0
        for session in list(self.sessions):
            grant = self._tokens.grant(session.token)
            if grant is None:
                session.abort(4401, "token revoked")
            elif grant != session.grant:
                session.abort(1012, "access changed: reconnect")
            else:
                continue
            closed += 1
        for ws, (token, room, can_write) in list(self._room_conns.items()):
            grant = self._tokens.grant(token)
            if grant is None:
                code, reason = 4401, "token revoked"
            elif not grant.can_join_room(room):
                code, reason = 4403, f"user {grant.user!r} may no longer join room {room!r}"
            elif grant.can_write_room(room) != can_write:
                code, reason = 1012, "access changed: reconnect"
            else:
                continue
            del self._room_conns[ws]
            task = asyncio.ensure_future(ws.close(code, reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            closed += 1
        if closed:
            log.info("tokens changed: closed %d connection(s) whose access was revoked or changed", closed)

    async def start(self, host: str = "127.0.0.1", port: int = 8765) -> tuple[str, int]:
        if self.tokens.open:
            log.warning("no tokens file: the relay is OPEN to anyone who can reach it (development only)")
        self._writer = asyncio.create_task(self._write_loop(), name="crdtsync-relay-writer")
        self._writer.add_done_callback(self._writer_ended)
        if self.limits.store_check > 0:
            self._checker = asyncio.create_task(self._check_store(), name="crdtsync-relay-store-check")
        loop = asyncio.get_running_loop()
        self._accept_errors = AcceptErrors(loop.get_exception_handler())
        loop.set_exception_handler(self._accept_errors)
        try:
            self._server = await serve(self._handle, host, port, max_size=self.limits.max_frame + 1024,
                                       compression=None, process_request=self._process_request,
                                       select_subprotocol=_subprotocol)
        except BaseException:  # e.g. the port is taken: leave nothing running
            await self.stop()
            raise
        sock = next(iter(self._server.sockets))
        self.address = sock.getsockname()[:2]
        log.info("relay %s listening on ws://%s:%d (log head %d, floor %d; at most %d connections)",
                 self.log.relay_id, *self.address, self.log.head, self.log.floor, self.connections.limit)
        return self.address

    async def stop(self) -> None:
        """Stop accepting, close every connection (1001), finish and commit queued pushes, close rooms."""
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None
        if self._checker is not None:
            self._checker.cancel()
            self._checker = None
        if self._writer is not None:
            if not self._writer.done():
                self.submit(None)
                await asyncio.wait([self._writer])
            self._writer = None
        if self.rooms is not None:
            await self.rooms.close()
        loop = asyncio.get_running_loop()
        if self._accept_errors is not None and loop.get_exception_handler() is self._accept_errors:
            loop.set_exception_handler(self._accept_errors.previous)
        self._accept_errors = None
        self._stopped.set()
        log.info("relay stopped at log head %d", self.log.head)

    async def wait_stopped(self) -> None:
        """Return once the relay stopped: ``stop()`` ran, or it failed (``failure``)."""
        await self._stopped.wait()

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        """The writer ended: after ``stop()`` asked it to, or because storing failed (a storage error, a
        database gone): then ``store_failed``."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        self.store_failed(exc, "storing", always=True)

    def store_failed(self, exc: BaseException, doing: str, *, always: bool = False) -> bool:
        """Whether ``exc``, raised while ``doing`` something with the store, is the store's failure
        (``is_store_failure``; ``always``: whatever it is). If so the relay stops, with ``failure`` set, for
        its process to exit and be restarted, instead of welcoming devices it can never answer (a
        connection to a database server that restarted stays broken). Said once: the first failure is
        logged CRITICAL with its traceback, every connection is closed with 1011, health checks and new
        connections get 503; later failures (the other connections' reads) are not logged again."""
        if not always and not is_store_failure(exc):
            return False
        if self.failure is not None:
            return True
        if is_full(exc) and not isinstance(exc, StoreFull):
            # said plainly, on the CRITICAL line and the command's last line alike (the store's own error,
            # its cause, is in the traceback)
            full = StoreFull(store_path(self.store))
            full.__cause__ = exc
            exc = full
        self.failure = exc
        log.critical("%s failed (%r): the relay stops; closing %d connection(s) with 1011", doing, exc,
                     len(self.sessions), exc_info=exc)
        for session in list(self.sessions):
            session.abort(1011, "relay storage failure", quiet=True)
        stopping = asyncio.ensure_future(self.stop())
        self._closing.add(stopping)
        stopping.add_done_callback(self._closing.discard)
        return True

    async def _check_store(self) -> None:
        """Read from the store every ``Limits.store_check`` seconds (in a thread): an idle relay whose
        database connection broke (its server restarted) stops then (``store_failed``), as it would at the
        next device's connection, rather than answer health checks with "okay" until then."""
        while True:
            await asyncio.sleep(self.limits.store_check)
            try:
                await asyncio.to_thread(self.store.load, ("relay", "head"))
            except Exception as e:
                self.store_failed(e, "checking the store", always=True)
                return

    # -- the writer ----------------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Take the queued pushes in groups and commit each group in one batch (off the event loop). While
        a group commits, the pushes arriving meanwhile are staged into the next group, which is committed
        as soon as the previous commit returned. A group is acknowledged and fanned out only once its own
        commit returned, and after the next group's commit was started: that commit's disk wait overlaps
        the acks and the fan-out. A group whose commit finished on the event loop (``_begin_commit``) is
        answered at once. Commits stay in order, one at a time; compaction runs between them."""
        stopping = False
        committing: _Group | None = None
        while True:
            group: _Group | None = None
            while not stopping:
                got, job = await self._next_job(committing)
                if not got:
                    break  # the commit in flight returned: finish it, then commit what was staged
                jobs: list[PushJob] = []
                count = group.changes if group is not None else 0
                while True:
                    if job is None:
                        stopping = True
                        break
                    jobs.append(job)
                    count += len(job.changes)
                    if count >= self.limits.group_changes or not self._jobs:
                        break
                    job = self._jobs.popleft()
                group = self._stage_group(group, jobs)
                if committing is None or group.changes >= self.limits.group_changes:
                    break
            done: list[Accepted] | None = None
            if committing is not None:
                done = await self._settle_group(committing)
            compaction = self.log.compact()
            if compaction is not None:
                if committing is not None and done is not None:
                    self._answer_group(committing, done)  # not held up by the compaction's commit
                    committing = None
                await self._commit_compaction(compaction)
            if group is not None and group.batch:
                group.commit = self._begin_commit(group.batch)
            if committing is not None and done is not None:
                self._answer_group(committing, done)
            committing = group
            if group is not None and (group.commit is None or group.commit.done()):
                # committed already (on the event loop: ``_begin_commit``), or nothing to commit: answered
                # now, not after the next group is staged and committed (a device waiting for its acks to
                # push more would wait that long); then one turn of the event loop for its fan-out and reads
                self._answer_group(group, await self._settle_group(group))
                committing = None
                await asyncio.sleep(0)
            if group is None and stopping:
                break

    def _begin_commit(self, batch: Batch) -> asyncio.Future[None]:
        """Start committing a group, before the previous group is answered, so that its commit overlaps the
        acks and fan-out.

        The store does the quick part here (SQLite with deferred syncs: the writes, on the event loop: a
        thread doing them fought the event loop for the GIL at every statement). What is left blocks: for
        most stores, the whole commit, run in the executor (at once, not on the next turn of the event loop
        as ``to_thread`` would). When all that is left is a local fsync (``ByteStore.sync_only``) and fsyncs
        have been quick (an average under ``Limits.inline_sync``), it runs here, on the event loop, as
        Redis does its ``appendfsync always``: a thread it is handed to must wait for the GIL and for a
        core, which on a busy machine took longer (0.5-1 ms, measured on 2 shared cores) than a fast
        disk's fsync; on a slow disk the event loop is not held up, the fsync goes to the thread."""
        loop = asyncio.get_running_loop()
        try:
            finish = self.store.begin_commit(batch)
            if self.store.sync_only and self._sync_time < self.limits.inline_sync:
                self._timed_sync(finish)
                done: asyncio.Future[None] = loop.create_future()
                done.set_result(None)
                return done
        except Exception as e:  # answered as a failed commit, in ``_settle_group``
            failed: asyncio.Future[None] = loop.create_future()
            failed.set_exception(e)
            return failed
        if not self.store.sync_only:
            return loop.run_in_executor(None, finish)
        return loop.run_in_executor(None, self._timed_sync, finish)

    def _timed_sync(self, finish: Callable[[], None]) -> None:
        """``finish`` (a store's fsync), timed into the moving average that decides where the next one runs:
        on the event loop, or (when slow) in the executor until fsyncs are quick again."""
        t0 = time.perf_counter()
        finish()
        self._sync_time += (time.perf_counter() - t0 - self._sync_time) * 0.2

    async def _next_job(self, committing: _Group | None) -> tuple[bool, PushJob | None]:
        """The next queued push (None: stop), waiting for one; while a commit is in flight, only until that
        commit returns (then ``(False, None)``: its group is to be finished first, before any more pushes are
        staged: under load the queue is rarely empty, and the devices wait for those acks to push more)."""
        if committing is None:
            while not self._jobs:
                await self._arrival()
            return True, self._jobs.popleft()
        if committing.commit is None or committing.commit.done():
            return False, None
        if not self._jobs:
            await asyncio.wait((self._arrival(), committing.commit), return_when=asyncio.FIRST_COMPLETED)
            if not self._jobs:
                return False, None
        return True, self._jobs.popleft()

    def _arrival(self) -> asyncio.Future[None]:
        """A future that ``submit`` completes: the writer waits on it while no push is queued."""
        self._arrived = asyncio.get_running_loop().create_future()
        return self._arrived

    def _stage_group(self, group: _Group | None, jobs: list[PushJob]) -> _Group:
        """Validate and apply ``jobs`` into ``group`` (a new one if None), in order."""
        if group is None:
            group = _Group([], [], Batch())
        self.log.prefetch_seen([(j.session.device, c.change_id) for j in jobs for c in j.changes])
        for j in jobs:
            group.jobs.append(j)
            group.outcomes.append(self.log.stage(group.batch, j.session.device, j.session.grant, j.changes))
            group.changes += len(j.changes)
        return group

    async def _settle_group(self, group: _Group) -> list[Accepted]:
        """Wait for the group's commit; then its changes are durable (readers see them): returns them."""
        accepted = [a for o in group.outcomes for a in o.accepted]
        try:
            if group.commit is not None:
                await group.commit
        except Exception as e:
            # logged once, with its traceback, where the writer ends (``_writer_ended``): logging it here too
            # printed the same traceback twice
            e.add_note(f"(the relay was committing a group of {len(accepted)} changes)")
            self.log.abandon()
            raise  # the writer ends: ``_writer_ended`` stops the relay
        self.log.committed(accepted)
        if accepted:
            log.debug("stored %d changes (head %d)", len(accepted), self.log.head)
        return accepted

    def _answer_group(self, group: _Group, accepted: list[Accepted]) -> None:
        """Once the group is settled (never before): acknowledge its pushes and fan its changes out."""
        acks: dict[Session, list[Ack]] = {}  # each device's acks of this group, in the order it pushed
        for j, o in zip(group.jobs, group.outcomes, strict=True):
            acks.setdefault(j.session, []).append(Ack(j.push, tuple(o.ok), tuple(o.rejected), tuple(o.held),
                                                       tuple(o.waits)))
        for s, session_acks in acks.items():
            s.acknowledge(session_acks)
        if accepted:
            # on the event loop's next turn: the acks leave first, so that their devices, which wait for them
            # to push again, are not held up by the live frames of the same group (fan-outs stay in order)
            asyncio.get_running_loop().call_soon(self._fan_out, accepted)

    def _fan_out(self, accepted: list[Accepted]) -> None:
        frames = LiveFrames(self.log, accepted)  # one frame per scope, the same bytes for every device in it
        try:
            for s in list(self.sessions):
                s.fan_out(frames)  # (a limited scope's frame reads records from the store)
        except Exception as e:
            if not self.store_failed(e, "fanning changes out"):
                raise

    async def _commit_compaction(self, batch: Batch) -> None:
        await asyncio.to_thread(self.store.commit, batch)
        self.log.compacted(batch)
        log.info("compacted the log: floor now %d", self.log.floor)

    def submit(self, job: PushJob | None) -> None:
        """Queue a push for the writer (None: stop once the pushes queued before are done)."""
        self._jobs.append(job)
        waiter = self._arrived
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- connections ---------------------------------------------------------------------------------------

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """Health checks are answered whatever the load (503 once the store failed); a websocket over
        ``max_connections`` gets 503, any once the store failed (the relay is stopping)."""
        if self.failure is not None:
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "relay storage failure: stopping\n")
        return _health(ws, request) or self.connections.process_request(ws, request)

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        target = urlsplit(request.path if request is not None else "/")
        query = parse_qs(target.query)
        token = query.get("token", [None])[0]
        if request is not None and token is None:
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                token = auth[7:]
        peer = ws.remote_address
        grant = self.tokens.grant(token)
        if grant is None:
            self._refused_tokens(f"{peer}: {'missing' if not token else 'unknown'} token")
            await refuse(ws, 4401, "missing token" if not token else "unknown token")
            return
        path = target.path
        if path.startswith("/yjs/"):
            await self._handle_room(ws, grant, unquote(path[5:]), token)
            return
        if path not in ("/", "/sync"):
            await refuse(ws, 4404, f"no such endpoint {path!r}")
            return
        session = Session(self, ws, grant, token)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    async def _handle_room(self, ws: ServerConnection, grant: Grant, room: str, token: str | None) -> None:
        if not room:
            await refuse(ws, 4400, "no room name in the path")
            return
        if not grant.can_join_room(room):
            self._refused_rooms(f"{ws.remote_address}: room {room!r} for {grant.user!r}")
            await refuse(ws, 4403, f"user {grant.user!r} may not join room {room!r}")
            return
        if self.rooms is None:
            await refuse(ws, 4404, "plain Yjs rooms are not available on this relay")
            return
        can_write = grant.can_write_room(room)
        self._room_conns[ws] = (token, room, can_write)
        try:
            await self.rooms.serve(ws, room, can_write=can_write)
        finally:
            self._room_conns.pop(ws, None)
