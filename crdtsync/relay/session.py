"""One device's connection to the relay: its frames go through a protocol core (``Connection``), its
pushes to the relay's writer (``Relay.submit``), its pulls are served from the relay log, and the changes
the relay accepts reach it live (``fan_out``) once it has caught up.

Each session has a rate limit (``Bucket``: over ``Limits.rate`` frames a second it is slowed down, not
dropped) and a bounded live queue (``Limits.send_queue``): a device that reads slower than the others write
is closed with 4408 and catches up by delta sync when it reconnects. A connection that sends no HELLO within
``Limits.hello_timeout`` seconds of opening is closed with 4408 too: idle, it would hold a connection (and
a file descriptor) for ever, the websocket keepalive being answered by its client library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

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
from ..protocol.frames import MAX_PUSH
from .admission import Bucket
from .auth import Grant
from .fanout import LiveFrames, scope_key
from .log import LogGap

if TYPE_CHECKING:
    from .server import Relay

__all__ = ["PushJob", "Session"]

log = logging.getLogger("crdtsync.relay")


@dataclass
class PushJob:
    """A push from one session, queued for the relay's writer."""

    session: Session
    push: int
    changes: tuple[Change, ...]


class Session:
    """One device's connection: feeds its frames to a protocol core and acts on the events."""

    def __init__(self, relay: Relay, ws: ServerConnection, grant: Grant, token: str | None = None) -> None:
        self.relay = relay
        self.ws = ws
        self.grant = grant
        self.token = token  # (looked up again when the tokens are reloaded)
        self.scope = scope_key(grant)
        self.device = ""
        self.conn = Connection(Role.RELAY, max_frame=relay.limits.max_frame)
        self.out: asyncio.Queue[bytes | None] = asyncio.Queue(relay.limits.send_queue)
        self.live = False
        self.sent_to = 0  # highest seq this device has been sent (or skipped)
        self.live_collections: frozenset[str] | None = None
        self._pull_task: asyncio.Task[None] | None = None
        self._hello_task: asyncio.Task[None] | None = None
        self._hello_timer: asyncio.TimerHandle | None = None
        self._closing: tuple[int, str] | None = None
        self.waits = False  # its HELLO asked for the reasons of held changes (ACK's optional ``waits``)

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

    def abort(self, code: int, reason: str, *, quiet: bool = False) -> None:
        """Close this connection with a code and reason, without waiting for queued frames (logged unless
        ``quiet``: the relay closing every connection says so once)."""
        if self._closing is None:
            if not quiet:
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
        bucket = Bucket(self.relay.limits.rate, self.relay.limits.burst, float(self.relay.limits.burst))
        ws, conn = self.ws, self.conn
        self._hello_timer = asyncio.get_running_loop().call_later(self.relay.limits.hello_timeout, self._no_hello)
        try:
            while True:
                # ``recv`` rather than ``async for``: one generator frame less per message; both end the
                # loop with ConnectionClosed (OK or not) once the connection closes
                message = await ws.recv()
                if self._closing is not None:
                    break
                delay = bucket.delay()
                if delay > 0 and await bucket.slow(delay):
                    log.warning("%s (%s) is over the rate limit; slowing it down", self.device or "?",
                                self.ws.remote_address)
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
        except ConnectionClosed as e:
            if e.sent is not None and e.sent.code == CloseCode.MESSAGE_TOO_BIG:
                log.warning("%s (%s) sent a frame over the %d-byte limit (relay --max-frame): closed with 1009",
                            self.device or "a device", self.ws.remote_address, self.relay.limits.max_frame)
        except Exception as e:  # a bug here: the device is told (1011), not sent a normal close it would retry
            if not self.relay.store_failed(e, f"serving {self.device or 'a device'}"):
                log.exception("internal error serving %s (%s)", self.device or "?", self.ws.remote_address)
                self.abort(1011, "relay failure: internal error")
        finally:
            self.live = False
            if self._hello_timer is not None:
                self._hello_timer.cancel()
            for task in (self._pull_task, self._hello_task):
                if task is not None:
                    task.cancel()
            self._wake_sender()
            with contextlib.suppress(ConnectionClosed):
                await sender

    def _on_event(self, ev: Event) -> None:
        if isinstance(ev, Push):  # nearly every frame
            self.relay.submit(PushJob(self, ev.id, ev.changes))
        elif isinstance(ev, ProtocolError):
            log.warning("protocol error from %s (%s): %s", self.device or "?", self.ws.remote_address, ev.reason)
        elif isinstance(ev, Hello):
            if self._hello_timer is not None:
                self._hello_timer.cancel()
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

    def _no_hello(self) -> None:
        """No HELLO within ``Limits.hello_timeout`` of opening: closed (4408; a device would reconnect)."""
        self.abort(4408, f"no HELLO within {self.relay.limits.hello_timeout:g} s of opening")

    async def _on_hello(self, ev: Hello) -> None:
        """Bind the device to the token's user (a durable write, so in a thread: the event loop never waits
        for a commit) and welcome it. The peer may send nothing else until it is welcomed."""
        if "#" in ev.device or any(ord(ch) < 32 for ch in ev.device):
            # "device#N" is the writer tag of a device's records after a discard: not a device id
            self.conn.close(4400, "device ids are printable and contain no '#'")
            self._flush()
            return
        try:
            async with self.relay.device_binding:
                # an open relay knows no users: binding its devices to its placeholder user refused them
                # all for good once tokens came (a pilot, then production)
                ok = self.grant.anonymous or await asyncio.to_thread(self.relay.log.bind_device, ev.device,
                                                                     self.grant.user)
                last = await asyncio.to_thread(self.relay.log.last_change, ev.device) if ok else 0
        except Exception as e:  # the store failed (the relay stops), or a bug: this connection ends
            if not self.relay.store_failed(e, f"binding device {ev.device!r}"):
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
        self.waits = ev.understands("waits")
        lg = self.relay.log
        # "*": an open relay knows no users, so it accepts whichever user a device writes as
        user = "*" if self.grant.anonymous else self.grant.user
        self.conn.send(Welcome(user, lg.relay_id, lg.durable, lg.floor, self.grant.names("read"),
                               self.grant.names("write"), self.relay.limits.max_frame, last,
                               self.grant.scopes() if ev.understands("scopes") else None,
                               self.relay.schema_fingerprint if ev.understands("schema") else None))
        self._flush()
        log.info("device %s of %s connected from %s", ev.device, self.grant.user, self.ws.remote_address)

    def acknowledge(self, acks: list[Ack]) -> None:
        """Send the acks of this device's pushes that one write group committed: as few ACK frames as the
        protocol allows (one answers several pushes whose change ids are distinct, up to ``MAX_PUSH``
        changes in all, which keeps the frame's lists and header within their limits)."""
        if self.conn.state is not State.READY or self._closing is not None:
            return
        if not self.waits:  # a client from before ``waits`` refuses an ACK with a field it does not know
            acks = [replace(a, waits=()) if a.waits else a for a in acks]
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
        live frames go through the bounded queue. Live frames only start after the last page was sent.
        A connection being closed (``abort``: say its grant changed) is sent no further page: the rest of a
        resync under a grant that was just narrowed would carry records outside the new one."""
        if self._closing is not None:
            raise ConnectionClosed(None, None)
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
                try:
                    to = await self._serve_delta(ev, wanted)
                except LogGap:  # compacted while it paged through: what it missed comes with a full resync
                    log.info("the log was compacted under a pull of %s: a full resync instead", self.device)
                    to = await self._serve_reset(ev, wanted)
            if ev.live:
                self._go_live(to, wanted)
        except ConnectionClosed:
            pass
        except Exception as e:  # the store failed (the relay stops), or a bug: this connection ends
            if not self.relay.store_failed(e, f"serving a pull to {self.device}"):
                log.exception("serving pull %d to %s failed", ev.id, self.device)
                self.abort(1011, "internal error while serving the pull")

    async def _serve_delta(self, ev: Pull, wanted: frozenset[str] | None) -> int:
        """The records it asked back (``Pull.returns``), then the log after its cursor, page by page; returns
        the cursor it ends on. Raises ``LogGap`` if the log was compacted past a page still to send."""
        lg = self.relay.log
        to = since = ev.since
        total = await asyncio.to_thread(lg.count_delta, self.grant, self.device, since, wanted)
        done = 0
        if ev.returns:  # records holding changes it discarded after they got here: first, on their own
            back = await asyncio.to_thread(lg.returned, self.grant, self.device, ev.returns)
            total += len(back)
            budget = self.relay.limits.max_frame // 4
            while back:
                n, size = 0, 0
                while n < len(back) and n < self.relay.limits.page_items \
                        and (n == 0 or size + len(back[n].update) <= budget):
                    size += len(back[n].update)
                    n += 1
                done += n
                await self._put(Changes(ev.id, tuple(back[:n]), done, total, None, True))
                back = back[n:]
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
        return to

    async def _serve_reset(self, ev: Pull, wanted: frozenset[str] | None) -> int:
        """A full resync of the scope: every record's whole state, then the cursor ``head``. Finding the
        records in scope yields to the event loop between parts (``RelayLog.scope_chunks``), and so does
        each page: other connections are served meanwhile."""
        lg = self.relay.log
        head = lg.durable  # never a cursor past a change still being committed
        records: list[tuple[str, str, int]] = []
        for part in lg.scope_chunks(self.grant, wanted):
            records += part
            await asyncio.sleep(0)
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
                await asyncio.sleep(0)  # (``_put`` only waits when the socket's buffer is full)
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
            try:
                items, nxt = lg.delta(self.grant, self.device, to, wanted, max_items=self.relay.limits.page_items,
                                      max_bytes=self.relay.limits.max_frame // 4)
            except LogGap:  # compacted meanwhile: its next pull gets a full resync
                self.abort(4408, "the log was compacted past this device's position: reconnect to catch up")
                return
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
