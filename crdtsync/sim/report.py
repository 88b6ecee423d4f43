"""The simulator's output: a readable table and JSON, both reproducible from the seed.

Per strategy, with several runs (``--runs``), every count is the mean over the runs (``converged`` is the
share of runs that converged; ``convergence_ms`` the mean over those that did). ``independent_survival`` is
pooled, not a mean of ratios: one minus the independent-field writes lost in all runs over those made in
all runs, so a run with few such writes weighs little. ``cpu_s`` is the one number
that depends on the machine: ``deterministic=True`` leaves it out so that two runs of one seed print the
same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from .run import StrategyResult
from .workload import Params

__all__ = ["aggregate", "changed_options", "table", "to_json"]

_SUMMED = ("ops_done", "ops_skipped", "field_writes", "deletes", "lost_updates", "silently_lost",
           "conflicts_surfaced", "surfaced_writes", "independent_writes", "independent_lost",
           "delete_update_losses", "resurrections", "sim_ms", "bytes_sent", "messages_sent", "messages_lost")


def changed_options(params: Params) -> list[str]:
    """The ``crdtsync simulate`` options for the fault settings that differ from their defaults."""
    d = Params()
    out = []
    if params.skew_ms != d.skew_ms:
        out.append(f"--skew-ms {params.skew_ms}")
    if params.offline_mean_ms != d.offline_mean_ms:
        out.append(f"--offline-ms {params.offline_mean_ms}")
    if params.loss != d.loss:
        out.append(f"--loss {params.loss:g}")
    return out


def aggregate(strategy: str, runs: Sequence[StrategyResult], *, cpu: bool = True) -> dict[str, Any]:
    """One object per strategy: the metrics of one run, or their means over several."""
    if len(runs) == 1:
        out = runs[0].to_dict(cpu=cpu)
        out["runs"] = 1
        return out
    n = len(runs)
    out = {"strategy": strategy, "runs": n}
    for k in _SUMMED:
        out[k] = round(sum(getattr(r, k) for r in runs) / n, 3)
    iw = sum(r.independent_writes for r in runs)
    out["independent_survival"] = round(1 - sum(r.independent_lost for r in runs) / iw, 6) if iw else 1.0
    done = [r.convergence_ms for r in runs if r.convergence_ms is not None]
    out["converged"] = round(len(done) / n, 3)
    out["convergence_ms"] = round(sum(done) / len(done), 1) if done else None
    out["lost_updates_max"] = max(r.lost_updates for r in runs)
    out["silently_lost_max"] = max(r.silently_lost for r in runs)
    if cpu:
        out["cpu_s"] = round(sum(r.cpu_s for r in runs) / n, 3)
    return out


def to_json(params: Params, results: dict[str, list[StrategyResult]], *, cpu: bool = True) -> str:
    doc = {"params": params.to_dict(),
           "strategies": [aggregate(s, rs, cpu=cpu) for s, rs in results.items()]}
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


_COLUMNS: tuple[tuple[str, str], ...] = (
    ("strategy", "strategy"),
    ("lost_updates", "lost"),
    ("silently_lost", "silent"),
    ("conflicts_surfaced", "conflicts"),
    ("independent_survival", "indep.surv"),
    ("delete_update_losses", "del-vs-upd"),
    ("resurrections", "resurrect"),
    ("converged", "converged"),
    ("convergence_ms", "conv.ms"),
    ("bytes_sent", "bytes"),
    ("cpu_s", "cpu s"),
)


def _fmt(v: Any, key: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if key in ("independent_survival", "converged"):
            return f"{v:.3f}"
        if key == "cpu_s":
            return f"{v:.1f}"
        return f"{int(v):,}" if v.is_integer() else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def table(params: Params, results: dict[str, list[StrategyResult]], *, cpu: bool = True) -> str:
    rows = [aggregate(s, rs, cpu=cpu) for s, rs in results.items()]
    cols = [(k, h) for k, h in _COLUMNS if cpu or k != "cpu_s"]
    cells = [[h for _, h in cols]] + [[_fmt(r.get(k), k) for k, _ in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = []
    runs = rows[0]["runs"] if rows else 0
    lines.append(", ".join([f"seed {params.seed}", _count(params.devices, "device"),
                            _count(params.records, "record"), _count(params.edits, "edit"), *changed_options(params)])
                 + (f", mean of {runs} runs (seeds {params.seed}..{params.seed + runs - 1}; indep.surv pooled over "
                    "them)" if runs > 1 else ""))
    for i, row in enumerate(cells):
        pairs = enumerate(zip(row, widths, strict=True))
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in pairs))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if rows:
        r0 = rows[0]
        lines.append(f"{r0['strategy']}: field writes {_fmt(r0['field_writes'])}, deletes {_fmt(r0['deletes'])}, "
                     f"actions skipped {_fmt(r0['ops_skipped'])} (each strategy's own in --json)")
    return "\n".join(lines) + "\n"
