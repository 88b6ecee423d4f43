"""``crdtsync simulate``: run one seeded workload under each strategy and report, plot, or print JSON.

Output on stdout is reproducible from the arguments, except the ``cpu s`` column / ``cpu_s`` field, which
``--no-cpu`` leaves out. The progress bar goes to stderr, and only when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import cast

from ..schema import STRATEGIES, Strategy
from .report import table, to_json
from .run import StrategyResult, run_plan
from .workload import Params, make_plan

__all__ = ["add_arguments", "run", "simulate"]

_DEFAULT_STRATEGIES = "crdt,lww-field,lww-record"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Params()
    parser.add_argument("--seed", type=int, default=d.seed,
                        help="the seed; a seed reproduces a run exactly (default: %(default)s)")
    parser.add_argument("--devices", type=int, default=d.devices,
                        help="devices editing the records, at least 1 (default: %(default)s)")
    parser.add_argument("--records", type=int, default=d.records,
                        help="records in the workload, at least 1 (default: %(default)s)")
    parser.add_argument("--edits", type=int, default=d.edits,
                        help="edits made across the devices, at least 0 (default: %(default)s)")
    parser.add_argument("--strategies", default=_DEFAULT_STRATEGIES,
                        help=f"comma-separated, each once, from {','.join(STRATEGIES)} (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=1,
                        help="runs, at least 1, with seeds seed, seed+1, ...; means reported, indep.surv pooled "
                             "(default: %(default)s)")
    parser.add_argument("--skew-ms", type=int, default=d.skew_ms,
                        help="max clock skew of a device, at least 0 (default: %(default)s)")
    parser.add_argument("--offline-ms", type=int, default=d.offline_mean_ms,
                        help="mean offline period, at least 0 (default: %(default)s)")
    parser.add_argument("--loss", type=float, default=d.loss,
                        help="message loss probability, in [0, 1] (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per strategy)")
    parser.add_argument("--no-cpu", action="store_true", help="leave out CPU time (byte-for-byte output)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="write a figure of the comparison, in the format its extension names (.png, .svg, "
                             '.pdf, ...; needs matplotlib: pip install "crdtsync[plot]")')
    parser.add_argument("--sweep-edits", type=int, default=None,
                        help="edits per run in the plot's offline/skew sweeps, at least 1; only with --plot "
                             "(default: edits/5)")


class Progress:
    """A one-line progress bar on stderr, drawn only on a terminal."""

    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self.done = 0
        self.tty = sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        if self.tty:
            n = 30 * self.done // self.total
            sys.stderr.write(f"\r[{'#' * n}{'.' * (30 - n)}] {self.done}/{self.total} {label:<24}")
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def simulate(params: Params, strategies: list[Strategy], runs: int = 1,
             progress: Progress | None = None) -> dict[str, list[StrategyResult]]:
    """Every strategy on the plans of seeds ``params.seed`` .. ``params.seed + runs - 1``."""
    results: dict[str, list[StrategyResult]] = {s: [] for s in strategies}
    for i in range(runs):
        plan = make_plan(params.but(seed=params.seed + i))
        for s in strategies:
            results[s].append(run_plan(plan, s))
            if progress is not None:
                progress.step(f"seed {params.seed + i} {s}")
    return results


def _strategies(text: str) -> list[Strategy] | str:
    """The names of ``--strategies``, or what is wrong with them: an unknown or empty name, or one named
    twice (its runs would be added to the first one's, as if it were a run of its own)."""
    names = [s.strip() for s in text.split(",")]
    if "" in names:
        return f"--strategies has an empty name in {text!r}"
    bad = [s for s in names if s not in STRATEGIES]
    if bad:
        return f"unknown strategy {', '.join(bad)}; choose from {', '.join(STRATEGIES)}"
    twice = sorted({s for s in names if names.count(s) > 1})
    if twice:
        return f"--strategies names {', '.join(twice)} more than once"
    return cast(list[Strategy], names)


def run(args: argparse.Namespace) -> int:
    chosen = _strategies(args.strategies)
    if isinstance(chosen, str):
        print(f"crdtsync simulate: {chosen}", file=sys.stderr)
        return 2
    sweep_edits = 1 if args.sweep_edits is None else args.sweep_edits
    bad = [f"--{name.replace('_', '-')} must be at least {low}, not {value}"
           for name, value, low in [("runs", args.runs, 1), ("devices", args.devices, 1),
                                    ("records", args.records, 1), ("sweep_edits", sweep_edits, 1),
                                    ("edits", args.edits, 0), ("skew_ms", args.skew_ms, 0),
                                    ("offline_ms", args.offline_ms, 0)] if value < low]
    if not 0 <= args.loss <= 1:
        bad.append(f"--loss must be in [0, 1], not {args.loss:g}")
    if args.sweep_edits is not None and args.plot is None:
        bad.append("--sweep-edits only sizes the sweeps of --plot, and there is no --plot")
    if bad:
        print(f"crdtsync simulate: {'; '.join(bad)}", file=sys.stderr)
        return 2
    if args.plot is not None:
        from .plot import matplotlib_missing
        missing = matplotlib_missing()
        if missing is not None:
            print(f'crdtsync simulate: --plot needs matplotlib ({missing}): pip install "crdtsync[plot]"',
                  file=sys.stderr)
            return 2
        from .plot import plot_problem
        problem = plot_problem(args.plot)
        if problem is not None:
            print(f"crdtsync simulate: --plot {args.plot}: {problem}", file=sys.stderr)
            return 2
    params = Params(seed=args.seed, devices=args.devices, records=args.records, edits=args.edits,
                    skew_ms=args.skew_ms, offline_mean_ms=args.offline_ms, loss=args.loss)
    sweeps = 0
    if args.plot is not None:
        from .plot import sweep_runs
        sweeps = sweep_runs(params, chosen)
    progress = Progress(args.runs * len(chosen) + sweeps)
    results = simulate(params, chosen, args.runs, progress)
    cpu = not args.no_cpu
    sys.stdout.write(to_json(params, results, cpu=cpu) + "\n" if args.json else table(params, results, cpu=cpu))
    if args.plot is not None:
        from .plot import plot
        extra = [f"--strategies {args.strategies}"] if args.strategies != _DEFAULT_STRATEGIES else []
        extra += [f"--runs {args.runs}"] if args.runs != 1 else []
        extra += [f"--sweep-edits {args.sweep_edits}"] if args.sweep_edits is not None else []
        try:
            plot(args.plot, params, chosen, results, sweep_edits=args.sweep_edits, progress=progress, extra=extra)
        except OSError as e:
            print(f"crdtsync simulate: could not write {args.plot}: {e.strerror or e}", file=sys.stderr)
            return 1
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0
