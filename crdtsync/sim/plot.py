"""Plots of a comparison (matplotlib, imported only here): lost updates and convergence time by strategy,
and lost updates as offline periods and clock skew grow (sweeps over smaller runs of the same seed).
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from ..schema import Strategy
from .report import changed_options
from .run import StrategyResult, run_plan
from .workload import Params, make_plan, offline_periods

__all__ = ["OFFLINE_FACTORS", "SKEWS_MS", "SWEEP_POINTS", "matplotlib_missing", "offline_note", "plot",
           "plot_formats", "plot_problem", "save_figure", "sweep", "sweep_runs", "title"]

OFFLINE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)      # times the mean offline period
SKEWS_MS = (0, 1_000, 10_000, 60_000, 300_000)    # max clock skew
SWEEP_POINTS = len(OFFLINE_FACTORS)
assert len(SKEWS_MS) == SWEEP_POINTS


class _Step(Protocol):
    def step(self, label: str) -> None: ...


def matplotlib_missing() -> str | None:
    """Why matplotlib cannot be used (the import error), or None if it can: checked before any run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot
    except ImportError as e:
        return str(e)
    return None


def plot_formats() -> dict[str, str]:
    """The image formats matplotlib can write, by file extension (``png``: ``Portable Network Graphics``)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return dict(sorted(FigureCanvasBase.get_supported_filetypes().items()))


def plot_problem(path: Path) -> str | None:
    """Why ``path`` cannot take the plot (no or unknown extension, a folder that cannot be made or written,
    a folder in its place), or None if it can: checked before any run. Makes the missing folders."""
    fmt = path.suffix[1:].lower()
    formats = plot_formats()
    if fmt not in formats:
        said = f"unknown image format {path.suffix!r}" if fmt else "no file extension to tell the image format"
        return f"{said}; use one of {', '.join('.' + f for f in formats)}"
    if fmt == "pgf":
        import matplotlib

        tex = str(matplotlib.rcParams["pgf.texsystem"])
        if shutil.which(tex) is None:
            return f".pgf needs {tex} (LaTeX), which is not installed"
    if path.is_dir():
        return "is a folder"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot make its folder: {e.strerror or e}"
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return "cannot be written"
    return None


# what makes each format's bytes depend on the moment it was written (and on the writer's name), left out
_METADATA: dict[str, dict[str, None]] = {"png": {"Software": None}, "svg": {"Date": None},
                                         "pdf": {"CreationDate": None}}


@contextmanager
def _source_date_epoch() -> Iterator[None]:
    """PostScript takes its creation date from ``SOURCE_DATE_EPOCH`` (or the clock): pin it to 0."""
    old = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["SOURCE_DATE_EPOCH"]
        else:
            os.environ["SOURCE_DATE_EPOCH"] = old


def save_figure(fig: Any, path: Path, dpi: int = 90) -> None:
    """Write ``fig`` to ``path`` in the format its extension names (see ``plot_problem``), the same bytes for
    the same figure whenever it is written (except ``.pgf``), and all at once: the file is written under
    another name and renamed, so a failure leaves no half-written file behind."""
    import matplotlib

    fmt = path.suffix[1:].lower()
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "crdtsync"}), _source_date_epoch():
        if fmt == "svgz":  # gzip would stamp the current time in its header
            fig.savefig(buf, format="svg", dpi=dpi, metadata=_METADATA["svg"])
            data = gzip.compress(buf.getvalue(), mtime=0)
        else:
            fig.savefig(buf, format=fmt, dpi=dpi, metadata=_METADATA.get(fmt))
            data = buf.getvalue()
    part = path.with_name(f".{path.name}.part")
    try:
        part.write_bytes(data)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def _variants(base: Params) -> dict[str, list[Params]]:
    """The sweeps' parameters. With no offline periods (``offline_mean_ms`` 0) there is nothing to scale."""
    out = {"skew": [base.but(skew_ms=s) for s in SKEWS_MS]}
    if base.offline_mean_ms > 0:
        out["offline"] = [base.but(offline_mean_ms=int(base.offline_mean_ms * f)) for f in OFFLINE_FACTORS]
    return out


def offline_note(base: Params) -> str:
    """The offline sweep's points as played: a period still going when the workload ends is cut there, so on
    a short run the longest periods asked for are not played (the points bunch up: the sweep saturates). Says
    how long the workload lasts, how many periods were cut, and their mean per point, as played."""
    plans = [make_plan(p) for p in _variants(base).get("offline", [])]
    cut = total = 0
    means = []
    for plan in plans:
        windows = [w for ws in plan.offline.values() for w in ws]
        cut += sum(w.end == plan.end for w in windows)
        total += len(windows)
        means.append(offline_periods(plan) / max(1, len(windows)) / 1000)
    end = plans[0].end / 1000 if plans else 0
    return (f"as played: mean {', '.join(f'{m:.0f}' for m in means)} s\n"
            f"({cut} of {total} periods cut at the workload's end, {end:.0f} s)")


def sweep_runs(base: Params, strategies: Sequence[Strategy]) -> int:
    """How many runs ``sweep`` makes."""
    return sum(len(ps) for ps in _variants(base).values()) * len(strategies)


def title(params: Params, extra: Sequence[str] = ()) -> str:
    """The figure's title: the command line that reproduces it (options left at their default omitted);
    ``extra``: the options beyond ``params`` that shape the figure (``--strategies``, ``--runs``,
    ``--sweep-edits``), as given."""
    d = Params()
    run = [f"--{name} {getattr(params, name)}" for name in ("seed", "devices", "records", "edits")
           if getattr(params, name) != getattr(d, name)]
    return " ".join(["crdtsync simulate", *run, *changed_options(params), *extra])


def sweep(base: Params, strategies: Sequence[Strategy], progress: _Step | None = None
          ) -> dict[str, dict[str, list[StrategyResult]]]:
    """Runs of ``base`` with the offline mean scaled (unless it is 0), and with the skew set, per strategy."""
    variants = _variants(base)
    out: dict[str, dict[str, list[StrategyResult]]] = {axis: {} for axis in variants}
    for axis, params in variants.items():
        for s in strategies:
            out[axis][s] = []
        for p in params:
            plan = make_plan(p)
            for s in strategies:
                out[axis][s].append(run_plan(plan, s))
                if progress is not None:
                    progress.step(f"{axis} sweep {s}")
    return out


def plot(path: Path, params: Params, strategies: Sequence[Strategy], results: dict[str, list[StrategyResult]],
         *, sweep_edits: int | None = None, progress: _Step | None = None, extra: Sequence[str] = ()) -> None:
    """Write a 2x2 figure to ``path``: two bar charts of ``results`` and two sweeps (in the format its
    extension names: see ``plot_problem`` and ``save_figure``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    small = params.but(edits=sweep_edits if sweep_edits is not None else max(1, params.edits // 5))
    sw = sweep(small, strategies, progress)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    names = list(strategies)
    colors: dict[str, Any] = {s: f"C{i}" for i, s in enumerate(names)}

    def mean(rs: list[StrategyResult], key: str) -> float:
        vals = [getattr(r, key) for r in rs if getattr(r, key) is not None]
        return sum(vals) / len(vals) if vals else 0.0

    ax = axes[0][0]
    lost = [mean(results[s], "lost_updates") for s in names]
    silent = [mean(results[s], "silently_lost") for s in names]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], lost, 0.4, color=[colors[s] for s in names])
    ax.bar([x + 0.2 for x in xs], silent, 0.4, color=[colors[s] for s in names], alpha=0.5, hatch="//")
    for x, v in zip(xs, lost, strict=True):
        ax.annotate(f"{v:g}", (x - 0.2, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("field writes")
    ax.set_title(f"Lost updates ({params.edits} edits)")
    ax.legend(handles=[Patch(facecolor="grey", label="lost"),
                       Patch(facecolor="lightgrey", hatch="//", label="of which silently")])

    ax = axes[0][1]
    conv = [mean(results[s], "convergence_ms") / 1000 for s in names]
    ax.bar(list(xs), conv, 0.6, color=[colors[s] for s in names])
    for x, s in zip(xs, names, strict=True):
        if not all(r.converged for r in results[s]):
            ax.annotate("did not converge", (x, 0), ha="center", va="bottom", fontsize=8, color="red")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("seconds after the last edit")
    ax.set_title("Convergence time (faults off after the workload)")

    ax = axes[1][0]
    if "offline" in sw:
        xo = [params.offline_mean_ms * f / 1000 for f in OFFLINE_FACTORS]
        for s in names:
            ax.plot(xo, [r.lost_updates for r in sw["offline"][s]], marker="o", label=s, color=colors[s])
        ax.set_xscale("log")
        ax.set_xticks(xo, [f"{x:g}" for x in xo])
        ax.minorticks_off()
        ax.set_xlabel(f"mean offline period (s)\n{offline_note(small)}")
        ax.set_ylabel("lost updates")
        ax.legend()
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no offline periods (--offline-ms 0):\nno sweep", ha="center", va="center")
    ax.set_title(f"As offline time grows ({small.edits} edits)")

    ax = axes[1][1]
    xk = [max(s, 100) / 1000 for s in SKEWS_MS]
    for s in names:
        ax.plot(xk, [r.lost_updates for r in sw["skew"][s]], marker="o", label=s, color=colors[s])
    ax.set_xscale("log")
    ax.set_xticks(xk, [f"{s / 1000:g}" for s in SKEWS_MS])
    ax.minorticks_off()
    ax.set_xlabel("max clock skew of a device (s)")
    ax.set_ylabel("lost updates")
    ax.set_title(f"As clock skew grows ({small.edits} edits)")
    ax.legend()

    fig.suptitle(title(params, extra))
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_figure(fig, path)
    finally:
        plt.close(fig)
