"""What one leg of the fan-out benchmark measured, and the table that compares the legs."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LegResult", "format_table"]


@dataclass
class LegResult:
    """One server's run: ``updates`` writes fanned out to ``len(visible)`` readers.

    ``seconds`` runs from the writer's first write until the last reader had every update (or the
    timeout). ``received`` counts update messages that reached each reader; ``visible`` the updates each
    reader's document actually shows (a Yjs reader that misses one update also holds back every later
    update of that writer, so the two can differ a lot).
    """

    name: str
    updates: int
    seconds: float
    received: list[int]
    visible: list[int]
    timed_out: bool = False
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    stored_at_done: int | None = None
    stored_final: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Updates per second delivered to every reader (0 when some reader never got them all)."""
        if self.timed_out or self.missing_total or self.seconds <= 0:
            return 0.0
        return self.updates / self.seconds

    @property
    def missing(self) -> list[int]:
        return [self.updates - v for v in self.visible]

    @property
    def missing_total(self) -> int:
        return sum(self.missing)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "n/a"


def format_table(results: list[LegResult], *, readers: int) -> str:
    """The per-server table, then the ratios of the first crdtsync leg against the baselines."""
    lines = [f"{'server':<28} {'seconds':>8} {'updates/s':>10} {'srv cpu':>8} {'µs/upd':>7} {'cli cpu':>8} "
             f"{'missing/reader':>22} {'stored@done':>12} {'stored':>8}"]
    for r in results:
        miss = ",".join(str(m) for m in r.missing) if r.missing_total else f"0 x{len(r.visible)}"
        lines.append(
            f"{r.name:<28} {r.seconds:>8.3f} {r.rate:>10.0f} {r.server_cpu:>8.2f} "
            f"{r.server_cpu / r.updates * 1e6:>7.0f} {r.client_cpu:>8.2f} "
            f"{miss:>22} {'-' if r.stored_at_done is None else r.stored_at_done:>12} "
            f"{'-' if r.stored_final is None else r.stored_final:>8}"
            + ("  TIMEOUT" if r.timed_out else ""))
        for note in r.notes:
            lines.append(f"    note: {note}")
    by_name = {r.name: r for r in results}
    crdt = next((r for r in results if r.name.startswith("crdtsync")), None)
    pyws = by_name.get("pycrdt-websocket+sqlite") or by_name.get("pycrdt-websocket")
    bare = by_name.get("bare-broadcast")
    if crdt is not None:
        lines.append("")
        if pyws is not None:
            ratio = _ratio(crdt.rate, pyws.rate)
            ok = pyws.rate > 0 and crdt.rate >= pyws.rate
            lines.append(f"{crdt.name}/{pyws.name} throughput: {ratio}   "
                         f"(target >= 1.00: {'MET' if ok else 'NOT MET'})")
        if bare is not None:
            ratio = _ratio(crdt.rate, bare.rate)
            ok = bare.rate > 0 and crdt.rate >= 0.5 * bare.rate
            lines.append(f"{crdt.name}/bare-broadcast throughput: {ratio}   "
                         f"(target >= 0.50: {'MET' if ok else 'NOT MET'})")
        for base in (pyws, bare):
            if base is not None and crdt.server_cpu > 0:
                lines.append(f"  server CPU per update: {crdt.name} {crdt.server_cpu / crdt.updates * 1e6:.0f} µs, "
                             f"{base.name} {base.server_cpu / base.updates * 1e6:.0f} µs "
                             f"(CPU ratio {base.server_cpu / crdt.server_cpu:.2f}: what the throughput ratio would be "
                             "if each server had a core to itself)")
    lines.append(f"({readers} readers; updates/s = updates / seconds, 0 when a reader missed updates or timed out; "
                 "srv cpu = the server process's CPU seconds during the timed part, µs/upd the same per update)")
    return "\n".join(lines)
