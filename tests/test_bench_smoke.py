"""The benchmarks still run, at toy sizes (they are not timed here: benchmarks are not tests)."""

from __future__ import annotations

import importlib.util

import pytest

from bench import bench_delta, bench_fanout, bench_protocol_core

HAS_PYCRDT_WEBSOCKET = importlib.util.find_spec("pycrdt.websocket") is not None


def _rows(out: str, names: set[str]) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if line.split()[:1] and line.split()[0] in names}


def test_fanout_crdtsync_legs_deliver_everything_at_toy_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_fanout.main(["--updates", "50", "--readers", "2", "--records", "10", "--timeout", "30",
                              "--legs", "bare,crdtsync,crdtsync-client"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out, {"bare-broadcast", "crdtsync", "crdtsync-client"})
    assert set(rows) == {"bare-broadcast", "crdtsync", "crdtsync-client"}
    for line in rows.values():
        assert "0 x2" in line and "TIMEOUT" not in line, line
    assert "crdtsync/bare-broadcast throughput" in out


@pytest.mark.skipif(not HAS_PYCRDT_WEBSOCKET, reason="the baselines need pycrdt-websocket (dev extra)")
def test_fanout_pycrdt_websocket_legs_deliver_everything_at_toy_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_fanout.main(["--updates", "50", "--readers", "2", "--timeout", "30",
                              "--legs", "pycrdt,pycrdt-sqlite"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out, {"pycrdt-websocket", "pycrdt-websocket+sqlite"})
    assert set(rows) == {"pycrdt-websocket", "pycrdt-websocket+sqlite"}
    for line in rows.values():
        assert "0 x2" in line and "TIMEOUT" not in line, line


def test_delta_catches_up_at_toy_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_delta.main(["--sizes", "30,120", "--changes", "10", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out, {"30", "120"})
    assert set(rows) == {"30", "120"}
    for line in rows.values():
        assert line.split()[-2] == "10", line  # the device downloaded exactly the 10 remote changes
    assert "time(120) / time(30)" in out and "bytes downloaded / bytes of the changes' updates" in out


def test_relay_drafts_bench_runs_at_toy_size(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import bench_relay_drafts
    assert bench_relay_drafts.main(["--edits", "12", "--window", "4"]) == 0
    out = capsys.readouterr().out
    assert set(_rows(out, {"crdt", "lww-record", "lww-patch"})) == {"crdt", "lww-record", "lww-patch"}
    assert "drafts/crdt at the end of the history" in out


def test_commit_bench_runs_at_toy_size(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import bench_commit
    assert bench_commit.main(["--changes", "200", "--rounds", "1", "--synchronous", "OFF"]) == 0
    out = capsys.readouterr().out
    assert "commit  synchronous=OFF" in out and "ratio" in out


def test_protocol_core_paths_run_at_toy_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_protocol_core.main(["--updates", "70", "--group", "7", "--readers", "2", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert sum("baseline" in line for line in out.splitlines()) == 5
    assert "relay: receive PUSH + one ACK per group" in out


def test_hot_record_bench_runs_at_toy_size(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import bench_hot_record
    assert bench_hot_record.main(["--writes", "600", "--sync", "100", "--window", "200", "--marks", "200,400"]) == 0
    assert bench_hot_record.main(["--kinds", "--kind-writes", "40", "--sync", "20"]) == 0
    out = capsys.readouterr().out
    assert "cost at the last checkpoint / at the first" in out
    assert set(_rows(out, {"employees", "owner", "visits", "tags", "notes"})) == {
        "employees", "owner", "visits", "tags", "notes"}


def test_query_bench_runs_at_toy_size(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import bench_query
    assert bench_query.main(["--sizes", "120", "--rounds", "1"]) == 0  # (it checks each result against the baseline)
    out = capsys.readouterr().out
    assert "where state='open'" in out and "conflicts()" in out and "full/fast" in out
