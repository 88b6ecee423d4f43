"""The benchmarks still run, at toy sizes (they are not timed here: benchmarks are not tests)."""

from __future__ import annotations

import pytest

pytest.importorskip("pycrdt.websocket", reason="the fan-out baselines need pycrdt-websocket (dev extra)")

from bench import bench_fanout


def test_fanout_baselines_deliver_everything_at_toy_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_fanout.main(["--updates", "50", "--readers", "2", "--timeout", "20",
                              "--legs", "bare,pycrdt,pycrdt-sqlite"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1]
            and line.split()[0] in ("bare-broadcast", "pycrdt-websocket", "pycrdt-websocket+sqlite")}
    assert set(rows) == {"bare-broadcast", "pycrdt-websocket", "pycrdt-websocket+sqlite"}
    for line in rows.values():
        assert "0 x2" in line and "TIMEOUT" not in line, line
