"""The relay: a websockets server around the protocol core and the relay log.

Each connection is authenticated from its token (``Authorization: Bearer ...`` or ``?token=``) before
anything is read; a bad or missing token gets close code 4401. Pushes from every connection go through one
writer task, which validates and applies them in order, commits them to the store in groups (one durable
commit for many changes; ``Relay._begin_commit`` tells where its parts run), and only then acknowledges
them and fans them out to the connected devices whose scope covers them. Readers (delta sync) only see
committed changes.

Paths: ``/`` (or ``/sync``) speaks the crdtsync protocol; ``/yjs/<room>`` is handed to the plain Yjs rooms
(``crdtsync.relay.yjs``) after the room grants are checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from ..protocol.connection import Connection, Role, State
from ..protocol.events import (
    Ack,
    Acks,
    Bye,
    Change,
    Changes,
    Event,
    Hello,
    Item,
    Live,
    ProtocolError,
    Pull,
    Push,
    Welcome,
)
from ..protocol.frames import MAX_FRAME, MAX_PUSH
from ..schema import Schema
from ..store.base import Batch, ByteStore
from .auth import Grant, Tokens
from .fanout import LiveFrames, scope_key
from .log import Accepted, Outcome, RelayLog

__all__ = ["Limits", "Relay"]

log = logging.getLogger("crdtsync.relay")


@dataclass(frozen=True)
class Limits:
    """Per-connection limits. A connection over ``rate`` frames per second (bursts of ``burst``) is slowed
    down, not dropped; one whose live queue fills up (a reader slower than the writers) is closed with 4408
    and catches up by delta sync when it reconnects: nothing is ever dropped silently."""

    max_frame: int = MAX_FRAME
    rate: float = 500.0
    burst: int = 1000
    send_queue: int = 1024
    page_items: int = 500
    group_changes: int = 2000  # a write group stops growing here (plus at most one push of MAX_PUSH changes)
    # a store's commit that only has a local fsync left is finished on the event loop while fsyncs take
    # less than this on average (seconds; 0: always in a thread); see ``Relay._begin_commit``
    inline_sync: float = 0.002

    def __post_init__(self) -> None:
        if not self.rate > 0 or self.burst < 1 or self.max_frame < 1024 or self.send_queue < 1:
            raise ValueError(f"bad relay limits: {self} (rate > 0, burst >= 1, max_frame >= 1024, send_queue >= 1)")


@dataclass
class _Job:
    session: _Session
    push: int
    changes: tuple[Change, ...]


@dataclass
class _Group:
    """A write group: its pushes, what became of each, the batch holding the accepted changes, and the
    commit of that batch once started."""

    jobs: list[_Job]
    outcomes: list[Outcome]
    batch: Batch
    changes: int = 0
    commit: asyncio.Future[None] | None = None


@dataclass
class _Bucket:
    rate: float
    burst: int
    tokens: float = 0.0
    last: float = field(default_factory=time.monotonic)
    warned: bool = False

    def delay(self) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        self.tokens -= 1
        return -self.tokens / self.rate


def _load_yjs() -> Any:
    try:
        return importlib.import_module("crdtsync.relay.yjs")
    except ImportError:
        return None


class Relay:
    """A crdtsync relay over a byte store. ``await relay.start(host, port)``, then ``await relay.stop()``."""

    def __init__(self, store: ByteStore, schema: Schema, tokens: Tokens, *, limits: Limits = Limits(),
                 keep_log: int = 100_000) -> None:
        self.store = store
        self.schema = schema
        self.limits = limits
        self._sync_time = 0.0  # seconds, a moving average of the commits' fsyncs (``_begin_commit``)
        # the writer's record cache holds every record of the two groups that may be uncommitted at once
        self.log = RelayLog(store, schema, keep=keep_log,
                            cache_size=max(4096, 2 * (limits.group_changes + MAX_PUSH) + 1))
        self.tokens = tokens
        self.sessions: set[_Session] = set()
        # the pushes waiting for the writer, in arrival order (None: stop); ``_arrived`` is the future the
        # writer waits on while there are none (a plain deque: one job per push frame, the hot path)
        self._jobs: deque[_Job | None] = deque()
        self._arrived: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._server: Server | None = None
        self._stopped = asyncio.Event()
        self._binding = asyncio.Lock()  # device ids are bound to users one at a time
        yjs = _load_yjs()
        self.rooms: Any = yjs.YjsRooms(store, max_message=self.limits.max_frame) if yjs is not None else None
        self.address: tuple[str, int] = ("", 0)

    @property
    def tokens(self) -> Tokens:
        return self._tokens

    @tokens.setter
    def tokens(self, tokens: Tokens) -> None:
        """Replace the token table (SIGHUP reloads it): the log learns which fields ``where`` limits use."""
        self._tokens = tokens
        self.log.scope_fields = tokens.scope_fields()

    async def start(self, host: str = "127.0.0.1", port: int = 8765) -> tuple[str, int]:
        if self.tokens.open:
            log.warning("no tokens file: the relay is OPEN to anyone who can reach it (development only)")
        self._writer = asyncio.create_task(self._write_loop(), name="crdtsync-relay-writer")
        try:
            self._server = await serve(self._handle, host, port, max_size=self.limits.max_frame + 1024,
                                       compression=None)
        except BaseException:  # e.g. the port is taken: leave nothing running
            await self.stop()
            raise
        sock = next(iter(self._server.sockets))
        self.address = sock.getsockname()[:2]
        log.info("relay %s listening on ws://%s:%d (log head %d, floor %d)", self.log.relay_id, *self.address,
                 self.log.head, self.log.floor)
        return self.address

    async def stop(self) -> None:
        """Stop accepting, close every connection (1001), finish and commit queued pushes, close rooms."""
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None
        if self._writer is not None:
            self.submit(None)
            await self._writer
            self._writer = None
        if self.rooms is not None:
            await self.rooms.close()
        self._stopped.set()
        log.info("relay stopped at log head %d", self.log.head)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

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
                jobs: list[_Job] = []
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

    async def _next_job(self, committing: _Group | None) -> tuple[bool, _Job | None]:
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

    def _stage_group(self, group: _Group | None, jobs: list[_Job]) -> _Group:
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
        except Exception:
            log.exception("commit of %d changes failed; the relay stops", len(accepted))
            self.log.abandon()
            for s in list(self.sessions):
                s.abort(1011, "relay storage failure")
            raise
        self.log.committed(accepted)
        if accepted:
            log.debug("stored %d changes (head %d)", len(accepted), self.log.head)
        return accepted

    def _answer_group(self, group: _Group, accepted: list[Accepted]) -> None:
        """Once the group is settled (never before): acknowledge its pushes and fan its changes out."""
        acks: dict[_Session, list[Ack]] = {}  # each device's acks of this group, in the order it pushed
        for j, o in zip(group.jobs, group.outcomes, strict=True):
            acks.setdefault(j.session, []).append(Ack(j.push, tuple(o.ok), tuple(o.rejected), tuple(o.held)))
        for s, session_acks in acks.items():
            s.acknowledge(session_acks)
        if accepted:
            # on the event loop's next turn: the acks leave first, so that their devices, which wait for them
            # to push again, are not held up by the live frames of the same group (fan-outs stay in order)
            asyncio.get_running_loop().call_soon(self._fan_out, accepted)

    def _fan_out(self, accepted: list[Accepted]) -> None:
        frames = LiveFrames(self.log, accepted)  # one frame per scope, the same bytes for every device in it
        for s in list(self.sessions):
            s.fan_out(frames)

    async def _commit_compaction(self, batch: Batch) -> None:
        await asyncio.to_thread(self.store.commit, batch)
        self.log.compacted(batch)
        log.info("compacted the log: floor now %d", self.log.floor)

    def submit(self, job: _Job | None) -> None:
        """Queue a push for the writer (None: stop once the pushes queued before are done)."""
        self._jobs.append(job)
        waiter = self._arrived
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- connections ---------------------------------------------------------------------------------------

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
            log.warning("refused %s: %s token", peer, "missing" if not token else "unknown")
            await ws.close(4401, "missing token" if not token else "unknown token")
            return
        path = target.path
        if path.startswith("/yjs/"):
            await self._handle_room(ws, grant, unquote(path[5:]))
            return
        if path not in ("/", "/sync"):
            await ws.close(4404, f"no such endpoint {path!r}")
            return
        session = _Session(self, ws, grant)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    async def _handle_room(self, ws: ServerConnection, grant: Grant, room: str) -> None:
        if not room:
            await ws.close(4400, "no room name in the path")
            return
        if not grant.can_join_room(room):
            log.warning("refused %s room %r for %s", ws.remote_address, room, grant.user)
            await ws.close(4403, f"user {grant.user!r} may not join room {room!r}")
            return
        if self.rooms is None:
            await ws.close(4404, "plain Yjs rooms are not available on this relay")
            return
        await self.rooms.serve(ws, room, can_write=grant.can_write_room(room))


class _Session:
    """One device's connection: feeds its frames to a protocol core and acts on the events."""

    def __init__(self, relay: Relay, ws: ServerConnection, grant: Grant) -> None:
        self.relay = relay
        self.ws = ws
        self.grant = grant
        self.scope = scope_key(grant)
        self.device = ""
        self.conn = Connection(Role.RELAY, max_frame=relay.limits.max_frame)
        self.out: asyncio.Queue[bytes | None] = asyncio.Queue(relay.limits.send_queue)
        self.live = False
        self.sent_to = 0  # highest seq this device has been sent (or skipped)
        self.live_collections: frozenset[str] | None = None
        self._pull_task: asyncio.Task[None] | None = None
        self._hello_task: asyncio.Task[None] | None = None
        self._closing: tuple[int, str] | None = None

    def _flush(self) -> None:
        for data in self.conn.data_to_send():
            if self._closing is None and self.out.empty() and self._keeping_up():
                # nothing queued ahead of it: written at once (what the send loop's ``ws.send`` would do,
                # minus a task switch per frame); a connection that does not keep up goes through the queue
                try:
                    broadcast((self.ws,), data, raise_exceptions=True)
                except ExceptionGroup:
                    self.abort(1011, "could not write to the connection")
                    return
                continue
            try:
                self.out.put_nowait(data)
            except asyncio.QueueFull:
                self.abort(4408, "too slow: fell behind the live stream; reconnect to catch up")
                return
        if self.conn.state is State.CLOSED and self._closing is None:
            self._closing = (self.conn.close_code or 1000, self.conn.close_reason or "")
            self._wake_sender()

    def _keeping_up(self) -> bool:
        """Whether the socket takes what is written: its write buffer is below the high-water mark, so the
        websocket is not paused (``ws.send`` would not wait for it to drain)."""
        transport = self.ws.transport
        return transport is not None and transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]

    def _wake_sender(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.out.put_nowait(None)

    def abort(self, code: int, reason: str) -> None:
        """Close this connection with a code and reason, without waiting for queued frames."""
        if self._closing is None:
            log.warning("closing %s (%s): %d %s", self.device or "?", self.ws.remote_address, code, reason)
            self._closing = (code, reason)
            self.live = False
            while not self.out.empty():
                self.out.get_nowait()
            self._wake_sender()

    async def _send_loop(self) -> None:
        while True:
            data = await self.out.get()
            if data is None:
                break
            await self.ws.send(data)
        code, reason = self._closing or (1000, "")
        await self.ws.close(code, reason)

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        bucket = _Bucket(self.relay.limits.rate, self.relay.limits.burst, float(self.relay.limits.burst))
        ws, conn = self.ws, self.conn
        try:
            while True:
                # ``recv`` rather than ``async for``: one generator frame less per message; both end the
                # loop with ConnectionClosed (OK or not) once the connection closes
                message = await ws.recv()
                if self._closing is not None:
                    break
                delay = bucket.delay()
                if delay > 0:
                    if not bucket.warned:
                        log.warning("%s (%s) is over the rate limit; slowing it down", self.device or "?",
                                    self.ws.remote_address)
                        bucket.warned = True
                    await asyncio.sleep(delay)
                if isinstance(message, str):
                    log.warning("text frame from %s (%s)", self.device or "?", self.ws.remote_address)
                    self.conn.close(4400, "text frames are not part of the protocol: frames are binary")
                else:
                    conn.receive_data(message)
                for ev in conn.events_received():
                    self._on_event(ev)
                self._flush()
                if self._closing is not None:
                    break
        except ConnectionClosed:
            pass
        except Exception:  # a bug here: the device is told (1011), not sent a normal close it would retry
            log.exception("internal error serving %s (%s)", self.device or "?", self.ws.remote_address)
            self.abort(1011, "relay failure: internal error")
        finally:
            self.live = False
            for task in (self._pull_task, self._hello_task):
                if task is not None:
                    task.cancel()
            self._wake_sender()
            with contextlib.suppress(ConnectionClosed):
                await sender

    def _on_event(self, ev: Event) -> None:
        if isinstance(ev, Push):  # nearly every frame
            self.relay.submit(_Job(self, ev.id, ev.changes))
        elif isinstance(ev, ProtocolError):
            log.warning("protocol error from %s (%s): %s", self.device or "?", self.ws.remote_address, ev.reason)
        elif isinstance(ev, Hello):
            self._hello_task = asyncio.create_task(self._on_hello(ev))
        elif isinstance(ev, Pull):
            refused = [c for c in ev.collections or () if not self.grant.can_read(c)]
            if refused:
                log.warning("refused %s a pull of %s", self.device, refused)
                self.conn.close(4403, f"user {self.grant.user!r} may not read {', '.join(map(repr, refused))}")
                return
            self._pull_task = asyncio.create_task(self._serve_pull(ev))
        elif isinstance(ev, Bye):
            self._closing = (1000, "bye")

    async def _on_hello(self, ev: Hello) -> None:
        """Bind the device to the token's user (a durable write, so in a thread: the event loop never waits
        for a commit) and welcome it. The peer may send nothing else until it is welcomed."""
        if "#" in ev.device or any(ord(ch) < 32 for ch in ev.device):
            # "device#N" is the writer tag of a device's records after a discard: not a device id
            self.conn.close(4400, "device ids are printable and contain no '#'")
            self._flush()
            return
        try:
            async with self.relay._binding:
                ok = await asyncio.to_thread(self.relay.log.bind_device, ev.device, self.grant.user)
        except Exception:
            log.exception("binding device %r failed", ev.device)
            self.abort(1011, "relay storage failure")
            return
        if self._closing is not None or self.conn.state is State.CLOSED:
            return
        if not ok:
            log.warning("refused device %r for user %r: it belongs to another user", ev.device, self.grant.user)
            self.conn.close(4403, f"device {ev.device!r} belongs to another user")
            self._flush()
            return
        self.device = ev.device
        lg = self.relay.log
        # "*": an open relay knows no users, so it accepts whichever user a device writes as
        user = "*" if self.grant.anonymous else self.grant.user
        self.conn.send(Welcome(user, lg.relay_id, lg.durable, lg.floor, self.grant.names("read"),
                               self.grant.names("write")))
        self._flush()
        log.info("device %s of %s connected from %s", ev.device, self.grant.user, self.ws.remote_address)

    def acknowledge(self, acks: list[Ack]) -> None:
        """Send the acks of this device's pushes that one write group committed: as few ACK frames as the
        protocol allows (one answers several pushes whose change ids are distinct, up to ``MAX_PUSH``
        changes in all, which keeps the frame's lists and header within their limits)."""
        if self.conn.state is not State.READY or self._closing is not None:
            return
        frame: list[Ack] = []
        ids: set[int] = set()
        for ack in acks:
            mine = self.conn.ack_for(ack.id) or frozenset()
            if frame and (len(ids) + len(mine) > MAX_PUSH or not ids.isdisjoint(mine)):
                self._send_acks(frame)
                frame, ids = [], set()
            frame.append(ack)
            ids |= mine
        if frame:
            self._send_acks(frame)
        self._flush()

    def _send_acks(self, acks: list[Ack]) -> None:
        self.conn.send(acks[0] if len(acks) == 1 else Acks(tuple(acks)))

    async def _put(self, ev: Event) -> None:
        """Send a page of a pull straight away, waiting for the socket to drain (backpressure); acks and
        live frames go through the bounded queue. Live frames only start after the last page was sent."""
        self.conn.send(ev)
        for data in self.conn.data_to_send():
            await self.ws.send(data)

    async def _serve_pull(self, ev: Pull) -> None:
        lg = self.relay.log
        wanted = None if ev.collections is None else frozenset(ev.collections)
        try:
            if lg.needs_reset(ev.since, ev.relay):
                to = await self._serve_reset(ev, wanted)
            else:
                to = since = ev.since
                total = await asyncio.to_thread(lg.count_delta, self.grant, self.device, since, wanted)
                done = 0
                while True:
                    items, to = lg.delta(self.grant, self.device, since, wanted,
                                         max_items=self.relay.limits.page_items,
                                         max_bytes=self.relay.limits.max_frame // 4)
                    more = since < to < lg.durable
                    done += len(items)
                    # progress counts updates sent; the last page settles total on what was really sent
                    total = max(total, done) if more else done
                    await self._put(Changes(ev.id, tuple(items), done, total, to, more))
                    if not more:
                        break
                    since = to
            if ev.live:
                self._go_live(to, wanted)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("serving pull %d to %s failed", ev.id, self.device)
            self.abort(1011, "internal error while serving the pull")

    async def _serve_reset(self, ev: Pull, wanted: frozenset[str] | None) -> int:
        """A full resync of the scope: every record's whole state, then the cursor ``head``."""
        lg = self.relay.log
        head = lg.durable  # never a cursor past a change still being committed
        records = list(lg.scope_records(self.grant, wanted))
        total = len(records)
        page = self.relay.limits.page_items
        if total == 0:
            await self._put(Changes(ev.id, (), 0, 0, head, False, True))
            return head
        budget = self.relay.limits.max_frame // 4
        done = 0
        chunk: list[Item] = []
        size = 0
        for c, r, seq in records:
            item = Item(c, r, seq, lg.record_update(c, r))
            if chunk and (len(chunk) >= page or size + len(item.update) > budget):
                done += len(chunk)
                await self._put(Changes(ev.id, tuple(chunk), done, total, None, True, True))
                chunk, size = [], 0
            chunk.append(item)
            size += len(item.update)
        await self._put(Changes(ev.id, tuple(chunk), total, total, head, False, True))
        return head

    def _go_live(self, to: int, wanted: frozenset[str] | None) -> None:
        """Switch to live changes after a pull that ended at ``to``, first sending (with no await in
        between, so no fan-out can slip past) whatever was stored while the last page was on its way."""
        lg = self.relay.log
        while to < lg.durable and self._closing is None:
            items, nxt = lg.delta(self.grant, self.device, to, wanted, max_items=self.relay.limits.page_items,
                                  max_bytes=self.relay.limits.max_frame // 4)
            if nxt <= to:
                break
            to = nxt
            if items:
                self.conn.send(Live(tuple(items)))
                self._flush()
        self.sent_to = max(self.sent_to, to) if self.live else to
        self.live, self.live_collections = True, wanted

    def fan_out(self, frames: LiveFrames) -> None:
        """Send changes just stored by others to this device, if in its scope (never twice)."""
        if not self.live or self._closing is not None or self.conn.state is not State.READY:
            return
        wanted = self.live_collections
        if frames.whole(self.device, self.sent_to, wanted):
            self.sent_to = frames.last
            self._send_live(frames.frame(self.scope, self.grant, frames.accepted))
            return
        selected = []
        for a in frames.accepted:
            if a.seq <= self.sent_to:
                continue
            self.sent_to = a.seq
            if a.device == self.device:
                continue
            if wanted is not None and a.collection not in wanted:
                continue
            selected.append(a)
        if selected:
            self._send_live(frames.frame(self.scope, self.grant, selected))

    def _send_live(self, made: tuple[Live, bytes] | None) -> None:
        if made is not None:
            self.conn.send(*made)
            self._flush()
