"""One simulated run of a plan under one strategy, and the metrics that come out of it.

The runner wires devices, the server and the network on one event queue and plays the plan: edits, sync
rounds, offline periods, partitions, crashes. When the plan ends, faults stop (every device back online,
no loss, no partition) and devices keep syncing until they converge or ``heal_max_ms`` passes. Then the
oracle judges every write. Only ``cpu_s`` depends on the machine; everything else is a function of the
parameters.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from ..replica import Replica
from ..schema import Strategy
from ..store.memory import MemoryStore
from .device import EPOCH_MS, SimDevice, merge_knowledge, snapshot
from .network import EventQueue, Message, Network
from .oracle import FinalRecord, Write, evaluate
from .server import SimServer
from .workload import COLLECTION, Op, Plan, workload_schema

__all__ = ["Outcome", "StrategyResult", "play", "run_plan"]


@dataclass
class StrategyResult:
    """What one run measured. ``cpu_s`` is the only field that is not reproducible from the seed."""

    strategy: str
    ops_done: int
    ops_skipped: int
    field_writes: int
    deletes: int
    lost_updates: int
    silently_lost: int
    conflicts_surfaced: int
    surfaced_writes: int
    independent_writes: int
    independent_lost: int
    independent_survival: float
    delete_update_losses: int
    resurrections: int
    converged: bool
    convergence_ms: int | None
    sim_ms: int
    bytes_sent: int
    messages_sent: int
    messages_lost: int
    cpu_s: float

    def to_dict(self, cpu: bool = True) -> dict[str, Any]:
        d = asdict(self)
        d["independent_survival"] = round(self.independent_survival, 6)
        if cpu:
            d["cpu_s"] = round(self.cpu_s, 3)
        else:
            del d["cpu_s"]
        return d


def _upload_size(changes: list[tuple[str, str, int, bytes]]) -> int:
    return 24 + sum(len(c) + len(r) + 10 + len(u) for c, r, _, u in changes)


class _Run:
    def __init__(self, plan: Plan, strategy: Strategy) -> None:
        p = plan.params
        self.plan = plan
        self.schema = workload_schema().with_strategy(strategy)
        self.q = EventQueue()
        self.net = Network(self.q, p.seed, p.latency_ms, p.jitter_ms, p.loss, p.duplicate, self._deliver)
        self.server = SimServer(self.schema)
        self.devices = [SimDevice(i, self.schema, lambda: self.q.now, plan.skews[i], p.seed)
                        for i in range(p.devices)]
        self.by_name = {d.name: d for d in self.devices}
        self.writes: list[Write] = []
        self.notified: set[int] = set()
        self.ops_done = 0
        self.ops_skipped = 0
        self.healing = False
        self.converged_at: int | None = None
        self._since: int | None = None  # when the system last became settled and converged
        self._mark = 0  # messages sent by then
        self._touched = True  # a device may have changed what it shows since the states were compared
        self._cut: dict[str, int] = {}
        self._ids = 0

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    # -- setup: every device starts with the same records, via the server -----------------------------------

    def seed(self) -> None:
        seed = Replica(MemoryStore(), self.schema, device="seed", user="admin", wall=lambda: EPOCH_MS,
                       random_bytes=lambda n: b"\x00\x00\x00\x02"[:n].rjust(n, b"\x00"))
        for rid, values in self.plan.initial:
            seed.create(COLLECTION, values, id=rid)
        changes = [(pc.collection, pc.record, pc.id, u) for pc, u in seed.outgoing()]
        self.server.upload("seed", changes, 0)
        self.server.knowledge["seed"] = len(self.plan.initial)
        for d in self.devices:
            assert d.replica is not None
            d.replica.apply_remote((e.collection, e.record, e.update) for e in self.server.since(d.name, 0))
            d.set_cursor(self.server.head)
            merge_knowledge(d.knowledge, self.server.knowledge)

    # -- the network ------------------------------------------------------------------------------------------

    def _deliver(self, msg: Message) -> None:
        if msg.receiver == "server":
            self._server_receive(msg)
            return
        d = self.by_name[msg.receiver]
        if not d.up or not d.online:
            self.net.messages_lost += 1
            return
        self._device_receive(d, msg)

    def sync(self, d: SimDevice) -> None:
        if not d.up or not d.online or d.replica is None:
            return
        changes = [(pc.collection, pc.record, pc.id, u) for pc, u in d.replica.outgoing()]
        body = {"changes": changes, "cursor": d.cursor, "knowledge": dict(d.knowledge)}
        self.net.send(Message(d.name, "server", "upload", body, _upload_size(changes)))

    def _server_receive(self, msg: Message) -> None:
        body = msg.body
        merge_knowledge(self.server.knowledge, body["knowledge"])
        res = self.server.upload(msg.sender, body["changes"], self.q.now)
        entries = self.server.since(msg.sender, body["cursor"])
        reply = {"acked": res.acked, "rejected": res.rejected, "entries": entries, "head": self.server.head,
                 "knowledge": dict(self.server.knowledge)}
        size = (24 + 8 * len(res.acked) + sum(40 + len(r[2]) for r in res.rejected)
                + sum(len(e.collection) + len(e.record) + 10 + len(e.update) for e in entries))
        self.net.send(Message("server", msg.sender, "reply", reply, size, origin=msg.origin))

    def _device_receive(self, d: SimDevice, msg: Message) -> None:
        r = d.replica
        assert r is not None
        body = msg.body
        r.acknowledge(body["acked"])
        for change_id, code, reason in body["rejected"]:
            pc = r.outbox.get(change_id)
            if pc is None:
                continue
            r.reject(change_id, code, reason)
            # the user sees the error and discards the record's changes (the only way forward)
            for gone in r.discard_record(pc.collection, pc.record):
                self.notified.update(d.change_writes.get(gone.id, ()))
        if body["entries"] or body["rejected"]:
            self._touched = True
        r.apply_remote((e.collection, e.record, e.update) for e in body["entries"])
        d.set_cursor(body["head"])
        merge_knowledge(d.knowledge, body["knowledge"])

    # -- the plan -------------------------------------------------------------------------------------------

    def schedule(self) -> None:
        p = self.plan.params
        at = self.q.at
        for op in self.plan.ops:
            at(op.time, partial(self._edit, op))
        for d in self.devices:
            at((d.index * 7919) % max(1, p.sync_every_ms), partial(self._tick, d))
            for w in self.plan.offline[d.index]:
                at(w.start, partial(self._set_online, d, False))
                at(w.end, partial(self._set_online, d, True))
        for part in self.plan.partitions:
            names = [self.devices[i].name for i in part.devices]
            at(part.start, partial(self._partition, names, +1))
            at(part.end, partial(self._partition, names, -1))
        for c in self.plan.crashes:
            at(c.time, partial(self._crash, self.devices[c.device]))

    def _edit(self, op: Op) -> None:
        if self.healing:
            return
        d = self.devices[op.device]
        made = d.write(op, self._next_id)
        if not made:
            self.ops_skipped += 1
            return
        self.ops_done += 1
        self.writes.extend(made)
        if self.plan.params.sync_on_write:
            self.sync(d)

    def _tick(self, d: SimDevice) -> None:
        self.sync(d)
        self.q.after(self.plan.params.sync_every_ms, partial(self._tick, d))

    def _set_online(self, d: SimDevice, online: bool) -> None:
        if self.healing:
            return
        d.online = online
        if online:
            self.sync(d)  # sync when the connection comes back

    def _partition(self, names: list[str], delta: int) -> None:
        if self.healing:
            return
        for n in names:
            self._cut[n] = self._cut.get(n, 0) + delta
        self.net.cut.clear()
        self.net.cut.update(n for n, k in sorted(self._cut.items()) if k > 0)

    def _crash(self, d: SimDevice) -> None:
        if self.healing or not d.up:
            return
        d.crash()
        self.q.after(self.plan.params.restart_ms, partial(self._restart, d))

    def _restart(self, d: SimDevice) -> None:
        if not d.up:
            d.start()
            self.sync(d)

    # -- the end --------------------------------------------------------------------------------------------

    def heal(self) -> None:
        self.healing = True
        self.net.faults_off()
        for d in self.devices:
            back = not d.online or not d.up
            d.online = True
            if not d.up:
                d.start()
            if back:
                self.sync(d)  # sync when the connection comes back

    def settled(self) -> bool:
        """Every outbox empty and every device's cursor at the server's head: nothing left to send or fetch.

        Idle polls and their empty replies may be in flight at any moment: they do not count."""
        head = self.server.head
        for d in self.devices:
            assert d.replica is not None
            if len(d.replica.outbox) or d.cursor < head:
                return False
        return True

    def states(self) -> list[dict[str, FinalRecord]]:
        out = []
        for d in self.devices:
            assert d.replica is not None
            out.append(snapshot(d.replica))
        return out

    def check(self) -> bool:
        """True (and ``converged_at`` set) once the system has converged for good.

        Converged: settled (see ``settled``) and every device showing the same state. It holds for good once
        every message sent before it first held, and every reply to one, has arrived with the system still
        converged: a message sent later is an idle poll or its reply (no outbox holds a change, so it
        carries none, and a reply brings nothing past a cursor at the head), which changes nothing.
        ``converged_at`` is the moment it first held; the run can stop at the check that confirms it.
        """
        if not self.settled():
            self._since = None
            return False
        if self._since is None or self._touched:
            self._touched = False
            states = self.states()
            if not all(s == states[0] for s in states[1:]):
                self._since = None
                return False
        if self._since is None:
            self._since, self._mark = self.q.now, self.net.sent
        oldest = self.net.oldest_in_flight()
        if oldest is not None and oldest <= self._mark:
            return False
        self.converged_at = self._since
        return True


@dataclass
class Outcome:
    """What a played run leaves for the oracle: the writes, who was told of failures, the final states."""

    writes: list[Write]
    notified: set[int]
    states: list[dict[str, FinalRecord]]
    converged_ms: int | None
    run: _Run


def play(plan: Plan, strategy: Strategy) -> Outcome:
    """Play ``plan`` under ``strategy``: the workload, then faults off until converged (or the deadline)."""
    run = _Run(plan, strategy)
    run.seed()
    run.schedule()
    run.q.run_until(plan.end)
    run.heal()
    if not run.check():
        run.q.run_until(plan.end + plan.params.heal_max_ms, stop=run.check)
    conv = run.converged_at
    return Outcome(run.writes, run.notified, run.states(), None if conv is None else conv - plan.end, run)


def run_plan(plan: Plan, strategy: Strategy) -> StrategyResult:
    """Play ``plan`` under ``strategy`` and judge it with the oracle."""
    cpu0 = time.process_time()
    out = play(plan, strategy)
    run = out.run
    rep = evaluate(out.writes, out.states, out.notified)
    cpu = time.process_time() - cpu0
    return StrategyResult(
        strategy=strategy, ops_done=run.ops_done, ops_skipped=run.ops_skipped, field_writes=rep.field_writes,
        deletes=rep.deletes, lost_updates=rep.lost_updates, silently_lost=rep.silently_lost,
        conflicts_surfaced=rep.conflicts_open, surfaced_writes=rep.surfaced_writes,
        independent_writes=rep.independent_writes, independent_lost=rep.independent_lost,
        independent_survival=rep.independent_survival, delete_update_losses=rep.delete_update_losses,
        resurrections=rep.resurrections, converged=out.converged_ms is not None,
        convergence_ms=out.converged_ms, sim_ms=run.q.now,
        bytes_sent=run.net.bytes_sent, messages_sent=run.net.messages_sent, messages_lost=run.net.messages_lost,
        cpu_s=cpu)


