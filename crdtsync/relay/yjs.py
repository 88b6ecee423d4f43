"""Plain Yjs rooms over websockets: the y-websocket protocol, served from a byte store.

The relay routes ``/yjs/<room>`` here: ``await rooms.serve(ws, room, can_write=...)`` runs one connection
until it closes. The protocol logic lives in ``crdtsync.protocol.yroom`` (no I/O); this module is the
asyncio shell around it, and it owns three policies:

- **Durable before visible.** An update from a client is committed to the store, then applied to the
  room's document and sent to the others (and to the sender too when it let in updates the room held
  pending: it lacks those). Commits are batched per room: while one is on disk, the next
  updates gather and go in one transaction. Store calls run on one worker thread, never on the event loop,
  and in submission order.
- **No drops, and nobody waits for a slow reader.** A room admits at most ``max_pending`` (count and bytes)
  updates in flight, after which it stops reading from its clients (TCP pushes back on the senders). What
  a room sends to its clients never waits: a client that reads slower than the room writes falls behind
  (``queue_size`` frames queued for it), and one still behind after ``send_timeout`` seconds, or
  with more than ``max_queue_bytes`` queued, is closed (code 1013, "reconnect"); a Yjs client that
  reconnects resyncs the whole document, so it misses nothing. A client's replies to its own messages
  wait for room in its queue, which holds up only that client.
- **Lazy rooms, compaction.** A room is loaded on its first connection (concurrent first connections share
  one load) and unloaded after its last leaves, once its updates are stored. Layout under the store:
  ``("yjs", room, "s")`` the snapshot, one merged Yjs update; ``("yjs", room, "u", n)`` updates since.
  When the room unloads, and while it is served once the updates since the snapshot are ``compact_after``
  (200) or more and weigh ``compact_ratio`` (half) of the snapshot's bytes, or are ``compact_max`` (10,000)
  in number, they are folded into the snapshot: so re-encoding a large room costs a bounded time per update.

Each connection is read at most ``rate`` messages a second (bursts of ``burst``): a client sending faster
is slowed down, never dropped, as a device is (``Limits.rate``: the relay passes its own). At most
``max_connections`` connections are served at once; one more is closed at once with 1013 (try again
later). The relay counts its devices in the same cap (``connections``) and refuses the connection over it
at its handshake already (503). An idle connection stays: a client may just be reading its room.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from pycrdt import merge_updates
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from ..protocol.yroom import (
    CLOSE_GOING_AWAY,
    CLOSE_MALFORMED,
    CLOSE_SERVER_ERROR,
    CLOSE_TOO_SLOW,
    CloseRequest,
    YRoom,
    YSession,
)
from ..protocol.ywebsocket import SYNC_UPDATE, sync_message
from ..store.base import Batch, ByteStore
from ..store.keys import Key
from ..timeouts import wait_for
from .admission import Bucket, ConnectionCap

__all__ = ["YjsRooms", "room_from_path", "room_key"]

log = logging.getLogger("crdtsync.relay.yjs")
T = TypeVar("T")


def room_from_path(path: str, prefix: str = "/yjs/") -> str | None:
    """The room a y-websocket client asks for with the request path ``path``, or None if not under ``prefix``.

    ``WebsocketProvider`` opens ``serverUrl + "/" + room + "?" + params`` without encoding the room
    (the URL parser percent-encodes spaces and non-ASCII; apps encode ``?#%`` themselves), so the room is
    the path after ``prefix``, without the query string, percent-decoded. An empty name is refused.
    """
    route = urlsplit(path).path
    if not route.startswith(prefix) or len(route) == len(prefix):
        return None
    return unquote(route[len(prefix):])


def room_key(room: str, *rest: str | int) -> Key:
    """The store key of a room's data: ``("yjs", room, "s")`` or ``("yjs", room, "u", n)``."""
    return ("yjs", room, *rest)


class _Conn:
    """One websocket with its send queue and the task that drains it.

    ``put`` (a reply to the client's own message) waits while ``queue_size`` frames are queued, and gives up
    on the client after ``send_timeout``. ``push`` (what the room sends to everyone) never waits: it starts
    the ``send_timeout`` clock when the queue reaches ``queue_size``, stops it once the client has read its
    way back below, and closes the client at once past ``max_bytes`` queued.
    """

    def __init__(self, ws: ServerConnection, room: str, queue_size: int, send_timeout: float, max_bytes: int
                 ) -> None:
        self.ws = ws
        self.room = room
        self.queue_size = queue_size
        self.send_timeout = send_timeout
        self.max_bytes = max_bytes
        self.queue: deque[bytes | CloseRequest] = deque()
        self.queued_bytes = 0
        self.space = asyncio.Event()  # set when a frame left the queue, or the connection died
        self.ready = asyncio.Event()  # set when the queue holds a frame
        self.dead = False
        self.closing: asyncio.Task[None] | None = None
        self.behind: asyncio.TimerHandle | None = None  # running while the client is behind (``push``)
        self.writer = asyncio.create_task(self._write())

    async def put(self, frame: bytes | CloseRequest) -> None:
        """Queue a frame; waits while the queue is full, and gives up on a client that stopped reading."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.send_timeout
        while len(self.queue) >= self.queue_size and not self.dead:
            self.space.clear()
            try:
                await wait_for(self.space.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                self._too_slow()
        if not self.dead:
            self._append(frame)

    def push(self, frame: bytes) -> None:
        """Queue a frame without waiting (see the class docstring)."""
        if self.dead:
            return
        self._append(frame)
        if self.queued_bytes > self.max_bytes:
            self._too_slow()
        elif len(self.queue) >= self.queue_size and self.behind is None:
            self.behind = asyncio.get_running_loop().call_later(self.send_timeout, self._too_slow)

    def _append(self, frame: bytes | CloseRequest) -> None:
        self.queue.append(frame)
        if not isinstance(frame, CloseRequest):
            self.queued_bytes += len(frame)
        self.ready.set()

    def _too_slow(self) -> None:
        if self.closing is None:
            log.warning("yjs room %r: closing a client too slow to read (%d frames, %d bytes queued for it)",
                        self.room, len(self.queue), self.queued_bytes)
        self.abandon(CloseRequest(CLOSE_TOO_SLOW, "client too slow to read; reconnect to resync"))

    def offer(self, frame: bytes) -> None:
        """Queue a frame if there is room (for ephemeral awareness removals sent while leaving)."""
        if not self.dead and len(self.queue) < self.queue_size:
            self._append(frame)

    def die(self) -> None:
        """Mark the connection gone: drop the queue and release everyone waiting to queue."""
        self.dead = True
        self.queue.clear()
        self.queued_bytes = 0
        if self.behind is not None:
            self.behind.cancel()
            self.behind = None
        self.space.set()

    def abandon(self, req: CloseRequest) -> None:
        """Close now, dropping whatever is queued: the client will reconnect and resync from the room."""
        if self.closing is None:
            self.die()
            self.writer.cancel()
            self.closing = asyncio.create_task(self.ws.close(req.code, req.reason))

    async def close_after_queue(self, req: CloseRequest) -> None:
        """Send what is queued, then close with ``req``."""
        await self.put(req)
        # asyncio.wait: neither the writer's end (cancelled by ``abandon``) nor the timeout raises here, and a
        # cancellation of this task is never swallowed (suppress(CancelledError) around the wait did that)
        await asyncio.wait([self.writer], timeout=self.send_timeout)
        if not self.writer.done():
            self.abandon(req)
        elif not self.writer.cancelled() and (err := self.writer.exception()) is not None:
            raise err

    async def _write(self) -> None:
        try:
            while True:
                while not self.queue:
                    self.ready.clear()
                    await self.ready.wait()
                item = self.queue.popleft()
                self.space.set()
                if isinstance(item, CloseRequest):
                    await self.ws.close(item.code, item.reason)
                    return
                self.queued_bytes -= len(item)
                if self.behind is not None and len(self.queue) < self.queue_size:
                    self.behind.cancel()  # caught up
                    self.behind = None
                await self.ws.send(item)
        except ConnectionClosed:
            pass
        finally:
            self.die()


class _Room:
    def __init__(self, name: str) -> None:
        self.name = name
        self.state: YRoom | None = None
        self.loading: asyncio.Future[None] | None = None
        self.conns: dict[_Conn, None] = {}
        self.refs = 0
        self.pending: list[tuple[bytes, _Conn | None]] = []
        self.inflight = 0
        self.inflight_bytes = 0
        self.room_for_more = asyncio.Condition()
        self.flusher: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.stored = 0  # updates stored since the snapshot, and their bytes
        self.stored_bytes = 0
        self.snapshot_bytes = 0
        self.next_n = 0


class YjsRooms:
    """Serves y-websocket rooms kept in ``store``; see the module docstring for the policies."""

    def __init__(self, store: ByteStore, *, max_message: int = 16 * 2**20, queue_size: int = 64,
                 send_timeout: float = 30.0, max_queue_bytes: int = 64 * 2**20, max_pending: int = 256,
                 max_pending_bytes: int = 32 * 2**20, compact_after: int = 200, compact_ratio: float = 0.5,
                 compact_max: int = 10_000, rate: float = 500.0, burst: int = 1000,
                 max_connections: int | None = None, connections: ConnectionCap | None = None) -> None:
        """``connections``: the count to hold connections in, shared with other servers (the relay's, which
        counts its devices too); by default one of its own, of ``max_connections`` (None: the process's
        open-files limit less a margin, ``admission.default_max_connections``)."""
        if not rate > 0 or burst < 1:
            raise ValueError(f"bad rate limit: rate {rate}, burst {burst} (rate > 0, burst >= 1)")
        self.store = store
        self.max_message = max_message
        self.queue_size = queue_size
        self.send_timeout = send_timeout
        self.max_queue_bytes = max_queue_bytes
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.compact_after = compact_after
        self.compact_ratio = compact_ratio
        self.compact_max = compact_max
        self.rate = rate
        self.burst = burst
        self.connections = connections if connections is not None else ConnectionCap(max_connections)
        self._rooms: dict[str, _Room] = {}
        self._conns: set[_Conn] = set()
        self._serving = 0
        self._all_done = asyncio.Event()
        self._all_done.set()
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crdtsync-yjs-store")

    def loaded_rooms(self) -> list[str]:
        """Names of the rooms held in memory (the rooms with connections, or still being stored)."""
        return sorted(self._rooms)

    async def _io(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- one connection ---------------------------------------------------------------------------------

    async def serve(self, ws: ServerConnection, room: str, *, can_write: bool) -> None:
        """Run the y-websocket protocol on ``ws`` for ``room`` until the connection closes."""
        if self._closed:
            await ws.close(CLOSE_GOING_AWAY, "the relay is shutting down")
            return
        if not self.connections.admit(ws):
            await ws.close(CloseCode.TRY_AGAIN_LATER, f"at the limit of {self.connections.limit} connections; "
                                                      "try again later")
            return
        ws.protocol.max_message_size = self.max_message
        self._serving += 1
        self._all_done.clear()
        try:
            await self._serve(ws, room, can_write)
        finally:
            self._serving -= 1
            if self._serving == 0:
                self._all_done.set()

    async def _serve(self, ws: ServerConnection, name: str, can_write: bool) -> None:
        try:
            room = await self._enter(name)
        except Exception:
            log.exception("yjs room %r could not be loaded", name)
            await ws.close(CLOSE_SERVER_ERROR, "the room could not be loaded")
            return
        assert room.state is not None
        conn = _Conn(ws, name, self.queue_size, self.send_timeout, max(self.max_queue_bytes, self.max_message))
        session = YSession(room.state, can_write=can_write)
        room.conns[conn] = None
        self._conns.add(conn)
        bucket = Bucket(self.rate, self.burst, float(self.burst))
        try:
            for frame in session.opening():
                await conn.put(frame)
            async for data in ws:
                delay = bucket.delay()
                if delay > 0 and await bucket.slow(delay):
                    log.warning("yjs room %r: a client (%s) is over the rate limit; slowing it down", name,
                                ws.remote_address)
                if isinstance(data, str):
                    await conn.close_after_queue(CloseRequest(CLOSE_MALFORMED, "text frame: y-websocket is binary"))
                    break
                out = session.receive(data)
                for frame in out.reply:
                    await conn.put(frame)
                for frame in out.to_all:
                    for other in list(room.conns):
                        other.push(frame)
                for update in out.updates:
                    await self._submit(room, update, conn)
                if out.close is not None:
                    log.info("yjs room %r: closing a connection: %s", name, out.close.reason)
                    await conn.close_after_queue(out.close)
                    break
        except ConnectionClosed as e:
            if e.sent is not None and e.sent.code == CloseCode.MESSAGE_TOO_BIG:
                # y-websocket reconnects and sends it again, in a loop, showing ``synced`` all the while
                log.warning("yjs room %r: a client sent a message over the %d-byte limit (relay --max-frame); "
                            "closed with 1009 (its edits are not stored; it will retry)", name, self.max_message)
        finally:
            room.conns.pop(conn, None)
            self._conns.discard(conn)
            conn.die()
            if not conn.writer.done() and conn.closing is None:
                conn.writer.cancel()
            for frame in session.leave():
                for other in list(room.conns):
                    other.offer(frame)
            await self._leave(room)

    # -- rooms: load, store, unload ---------------------------------------------------------------------

    async def _enter(self, name: str) -> _Room:
        room = self._rooms.get(name)
        if room is None:
            room = _Room(name)
            self._rooms[name] = room
            room.loading = asyncio.ensure_future(self._load(room))
            room.loading.add_done_callback(lambda f: f.cancelled() or f.exception())
        room.refs += 1
        assert room.loading is not None
        try:
            await asyncio.shield(room.loading)
        except BaseException:
            room.refs -= 1
            raise
        return room

    async def _load(self, room: _Room) -> None:
        def read() -> tuple[list[bytes], bytes | None, int, int, int]:
            snap = self.store.load(room_key(room.name, "s"))
            ups = self.store.load_range(room_key(room.name, "u"))
            parts = ([snap] if snap is not None else []) + [v for _, v in ups]
            merged: bytes | None = None
            if len(parts) == 1:
                merged = parts[0]
            elif parts:
                try:
                    merged = merge_updates(*parts)
                except Exception:  # a stored update Yrs cannot read: fall back to one by one
                    merged = None
            next_n = int(ups[-1][0][-1]) + 1 if ups else 0
            return parts, merged, len(ups), next_n, len(snap or b"")

        try:
            parts, merged, room.stored, room.next_n, room.snapshot_bytes = await self._io(read)
            room.stored_bytes = sum(map(len, parts)) - room.snapshot_bytes
            state = YRoom(room.name)
            if merged is None or state.apply(merged) is not None:
                for i, part in enumerate(parts):
                    err = state.apply(part)
                    if err is not None:
                        log.error("yjs room %r: stored part %d skipped: %s", room.name, i, err)
            room.state = state
        except BaseException:
            if self._rooms.get(room.name) is room:
                del self._rooms[room.name]
            raise

    async def _submit(self, room: _Room, update: bytes, sender: _Conn) -> None:
        """Queue an update for the next commit; waits while the room has too much in flight."""
        async with room.room_for_more:
            await room.room_for_more.wait_for(
                lambda: room.inflight == 0 or (room.inflight < self.max_pending
                                               and room.inflight_bytes + len(update) <= self.max_pending_bytes))
            room.inflight += 1
            room.inflight_bytes += len(update)
        room.pending.append((update, sender))
        room.idle.clear()
        if room.flusher is None:
            room.flusher = asyncio.create_task(self._flush(room))

    async def _done(self, room: _Room, nbytes: int) -> None:
        async with room.room_for_more:
            room.inflight -= 1
            room.inflight_bytes -= nbytes
            room.room_for_more.notify_all()

    async def _flush(self, room: _Room) -> None:
        """Commit pending updates in batches; after each commit, apply them and fan them out."""
        assert room.state is not None
        try:
            while room.pending:
                items, room.pending = room.pending, []
                batch = Batch()
                compact = self._time_to_compact(room)
                if compact:
                    snapshot = room.state.full_state()
                    batch.save(room_key(room.name, "s"), snapshot)
                    batch.remove_range(room_key(room.name, "u"))
                keys = []
                for update, _ in items:
                    keys.append(room_key(room.name, "u", room.next_n))
                    batch.save(keys[-1], update)
                    room.next_n += 1
                try:
                    await self._io(self.store.commit, batch)
                except Exception:
                    log.exception("yjs room %r: storing %d updates failed", room.name, len(items))
                    for update, sender in items:
                        if sender is not None:
                            sender.abandon(CloseRequest(CLOSE_SERVER_ERROR,
                                                        "the relay could not store an update; reconnect to retry"))
                        await self._done(room, len(update))
                    continue
                if compact:
                    room.stored, room.stored_bytes, room.snapshot_bytes = 0, 0, len(snapshot)
                room.stored += len(items)
                room.stored_bytes += sum(len(u) for u, _ in items)
                refused = Batch()
                for key, (update, sender) in zip(keys, items, strict=True):
                    applied = room.state.integrate(update)
                    err = applied.error
                    if err is not None:
                        # it decoded (``check_update``) but Yrs cannot apply it: garbage that looks like an
                        # update. Its sender is told, as for any malformed message, and it is not kept
                        log.warning("yjs room %r: %s", room.name, err)
                        refused.remove(key)
                        if sender is not None:
                            sender.abandon(CloseRequest(CLOSE_MALFORMED, f"update refused: {err}"[:120]))
                    elif applied.update is not None:
                        # what the room integrated, as Yrs encodes it, not the sender's bytes: the same as a
                        # client joining later gets, and nothing when the update was a repeat or waits.
                        # The sender gets it too when it let in updates the room held waiting: it lacks those
                        frame = sync_message(SYNC_UPDATE, applied.update)
                        for other in list(room.conns):
                            if other is not sender or applied.unblocked:
                                other.push(frame)
                    await self._done(room, len(update))
                if refused:
                    try:
                        await self._io(self.store.commit, refused)
                    except Exception:  # left in the store: loading skips it, the next compaction drops it
                        log.exception("yjs room %r: removing refused updates failed", room.name)
        finally:
            room.flusher = None
            if room.pending:  # cancelled mid-way: nothing more will run; do not leave waiters hanging
                room.pending.clear()
            room.idle.set()

    def _time_to_compact(self, room: _Room) -> bool:
        """Whether to fold the stored updates into a new snapshot now (see the module docstring).

        A snapshot re-encodes the whole room on the event loop (Yrs holds the GIL while it encodes, so a
        worker thread would stall the loop all the same): once the updates since the last one weigh a
        ``compact_ratio`` of it, its cost per update stays bounded, whatever the room's size.
        """
        if room.stored >= self.compact_max:
            return True
        return room.stored >= self.compact_after and room.stored_bytes >= self.compact_ratio * room.snapshot_bytes

    async def _leave(self, room: _Room) -> None:
        room.refs -= 1
        if room.refs > 0:
            return
        await room.idle.wait()
        if room.refs > 0 or self._rooms.get(room.name) is not room:
            return
        del self._rooms[room.name]
        if room.state is not None and room.stored > 0:
            batch = Batch()
            batch.save(room_key(room.name, "s"), room.state.full_state())
            batch.remove_range(room_key(room.name, "u"))
            try:
                await self._io(self.store.commit, batch)  # queued before any later load of this room
            except Exception:
                log.exception("yjs room %r: compaction on unload failed (its updates stay stored)", room.name)

    async def wait_idle(self) -> None:
        """Wait until no connection is served and every room's updates are stored and unloaded."""
        await self._all_done.wait()  # set once the last serve() returned, after its room was stored

    async def close(self) -> None:
        """Close every connection (1001, clients reconnect later), store what is pending, stop the worker."""
        self._closed = True
        for conn in list(self._conns):
            conn.abandon(CloseRequest(CLOSE_GOING_AWAY, "the relay is shutting down"))
        closing = [c.closing for c in self._conns if c.closing is not None]
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)
        await self._all_done.wait()
        for room in list(self._rooms.values()):
            await room.idle.wait()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
