"""Seeded workload generation: the parameters of a run, the schema, and the plan every strategy replays.

Everything here is a pure function of the parameters (the seed among them), drawn with ``random.Random``
only, so the same plan (edits, offline periods, partitions, crashes, clock skews) is replayed under each
strategy. Values written are unique tokens (``w<n>``, or the int ``n``), so the oracle can tell which write
a value in a final state came from.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from ..schema import Collection, Int, Ref, Schema, Str

__all__ = ["COLLECTION", "FIELDS", "Crash", "Op", "Params", "Partition", "Plan", "Window", "make_plan",
           "offline_periods", "workload_schema"]

COLLECTION = "accounts"
FIELDS = ("name", "phone", "stage", "owner", "amount")  # the fields edits touch; ``parent`` is set at create


def workload_schema() -> Schema:
    """The schema every simulated device uses (the runner switches its strategy)."""
    return Schema(Collection(COLLECTION, {"name": Str(), "phone": Str(), "stage": Str(), "owner": Str(),
                                          "amount": Int(), "parent": Ref(COLLECTION)}))


@dataclass(frozen=True)
class Params:
    """What a run simulates. Times are simulated milliseconds; probabilities are per message or per op."""

    seed: int = 7
    devices: int = 5
    records: int = 200
    edits: int = 5000
    edit_gap_ms: int = 2_000          # mean time between two edits on one device
    hot_fraction: float = 0.05        # share of records that get half of all edits (same-field clashes)
    fields_per_edit: int = 2          # at most this many fields per update
    p_delete: float = 0.02
    p_create: float = 0.05
    sync_every_ms: int = 10_000       # a device online syncs this often
    sync_on_write: bool = True        # and right after each local change, as the apps do when online
    online_mean_ms: int = 120_000     # devices alternate online / offline periods (exponential lengths)
    offline_mean_ms: int = 60_000
    skew_ms: int = 10_000             # each device's clock is off by a uniform draw in [-skew, +skew]
    latency_ms: int = 50              # one way, plus an exponential jitter of mean ``jitter_ms``
    jitter_ms: int = 200
    loss: float = 0.05
    duplicate: float = 0.02
    partition_every_ms: int = 300_000  # mean gap between partitions cutting some devices from the server
    partition_ms: int = 30_000
    crash_every_ms: int = 600_000     # mean gap between crashes of one device
    restart_ms: int = 5_000
    heal_max_ms: int = 600_000        # after the workload: no faults, sync until converged or this long

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def but(self, **changes: Any) -> Params:
        return replace(self, **changes)


@dataclass(frozen=True)
class Op:
    """One planned user action. ``kind`` is update, create or delete; ``values`` what it writes."""

    n: int
    time: int
    device: int
    kind: Literal["update", "create", "delete"]
    record: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Window:
    start: int
    end: int


@dataclass(frozen=True)
class Partition:
    start: int
    end: int
    devices: tuple[int, ...]


@dataclass(frozen=True)
class Crash:
    time: int
    device: int


@dataclass
class Plan:
    params: Params
    initial: list[tuple[str, dict[str, Any]]]
    ops: list[Op]
    offline: dict[int, list[Window]]
    partitions: list[Partition]
    crashes: list[Crash]
    skews: list[int]
    end: int


def _windows(rng: random.Random, end: int, on_mean: int, off_mean: int) -> list[Window]:
    out: list[Window] = []
    t = int(rng.expovariate(1 / on_mean)) if on_mean > 0 else end
    while off_mean > 0 and t < end:
        length = max(1, int(rng.expovariate(1 / off_mean)))
        out.append(Window(t, min(end, t + length)))
        t += length + max(1, int(rng.expovariate(1 / max(1, on_mean))))
    return out


def make_plan(p: Params) -> Plan:
    """The whole run, decided up front from ``p.seed``."""
    rng = random.Random(p.seed)
    initial = [(f"a{i:04d}", {"name": f"seed-{i}", "phone": f"p-{i}", "stage": "new", "owner": f"o-{i % 7}",
                              "amount": -i - 1}) for i in range(p.records)]
    ids = [rid for rid, _ in initial]
    hot = ids[:max(1, int(len(ids) * p.hot_fraction))]
    created: dict[int, list[str]] = {d: [] for d in range(p.devices)}
    clocks = [0.0] * p.devices
    ops: list[Op] = []
    for n in range(p.edits):
        d = rng.randrange(p.devices)
        clocks[d] += rng.expovariate(1 / p.edit_gap_ms)
        t = int(clocks[d]) + 1
        r = rng.random()
        if r < p.p_create:
            rid = f"n{n:05d}"
            parent = rng.choice(created[d]) if created[d] and rng.random() < 0.5 else rng.choice(ids)
            values: dict[str, Any] = {f: (n if f == "amount" else f"w{n}-{f}") for f in FIELDS}
            values["parent"] = parent
            ops.append(Op(n, t, d, "create", rid, values))
            created[d].append(rid)
            ids.append(rid)
        elif r < p.p_create + p.p_delete and len(ids) > len(hot):
            # hot records are where same-field clashes happen; deleting them would end the clashes early
            # (with no record outside the hot set yet, the action is an update instead)
            ops.append(Op(n, t, d, "delete", rng.choice(ids[len(hot):])))
        else:
            rid = rng.choice(hot) if rng.random() < 0.5 else rng.choice(ids)
            k = rng.randint(1, max(1, p.fields_per_edit))
            chosen = sorted(rng.sample(FIELDS, k))
            ops.append(Op(n, t, d, "update", rid, {f: (n if f == "amount" else f"w{n}-{f}") for f in chosen}))
    ops.sort(key=lambda o: (o.time, o.n))
    end = max((o.time for o in ops), default=0) + 1
    offline = {d: _windows(rng, end, p.online_mean_ms, p.offline_mean_ms) for d in range(p.devices)}
    partitions: list[Partition] = []
    t = 0
    while p.partition_every_ms > 0:
        t += max(1, int(rng.expovariate(1 / p.partition_every_ms)))
        if t >= end:
            break
        cut = tuple(sorted(rng.sample(range(p.devices), rng.randint(1, max(1, p.devices - 1)))))
        partitions.append(Partition(t, min(end, t + p.partition_ms), cut))
    crashes: list[Crash] = []
    for d in range(p.devices):
        t = 0
        while p.crash_every_ms > 0:
            t += max(1, int(rng.expovariate(1 / p.crash_every_ms)))
            if t >= end:
                break
            crashes.append(Crash(t, d))
    crashes.sort(key=lambda c: (c.time, c.device))
    skews = [rng.randint(-p.skew_ms, p.skew_ms) if p.skew_ms > 0 else 0 for _ in range(p.devices)]
    return Plan(p, initial, ops, offline, partitions, crashes, skews, end)


def offline_periods(plan: Plan) -> int:
    """The total length (ms) of the plan's offline periods, every device's, as played: a period still going
    when the workload ends is cut there (the devices come back online to converge)."""
    return sum(w.end - w.start for ws in plan.offline.values() for w in ws)
