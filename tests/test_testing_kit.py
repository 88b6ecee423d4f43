"""The testing kit itself: its strategies draw what a field allows (up to its limits), its machine exercises
a schema (edits find records, runs are not given up), fails loudly when it cannot write, runs on SQLite
files and closes them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import FailedHealthCheck, Unsatisfiable
from hypothesis.stateful import run_state_machine_as_test

from crdtsync import Collection, Counter, Schema, Str, Text
from crdtsync.store.sqlite import SQLiteStore
from crdtsync.testing import Cluster, ReplicaMachine, field_values, replica_machine
from crdtsync.testing.cluster import Cluster as ClusterImpl

_quiet = settings(derandomize=True, database=None, deadline=None)
WORK_ORDER = Str(required=True, pattern=r"WO-\d{4}-\d{6}")  # 14 characters


@_quiet
@given(field_values(WORK_ORDER))
def test_a_pattern_longer_than_a_dozen_characters_is_drawn(code: str) -> None:
    WORK_ORDER.check(code)


@pytest.mark.parametrize("f", [Str(max_length=40), Text(max_length=300)])
def test_strings_reach_max_length(f: Str | Text) -> None:
    longest = find(field_values(f), lambda s: s is not None and len(s) == f.max_length, settings=_quiet)
    f.check(longest)


def _run(machine: type, examples: int = 30, steps: int = 30) -> None:
    run_state_machine_as_test(machine, settings=settings(
        derandomize=True, max_examples=examples, stateful_step_count=steps, deadline=None, database=None,
        phases=[Phase.generate]))


def test_machine_fails_loudly_when_it_cannot_draw_a_record() -> None:
    impossible = Str(required=True, pattern=r"[a-z]{5}", min_length=6)
    with pytest.raises((Unsatisfiable, FailedHealthCheck)):
        _run(replica_machine(Schema(Collection("wo", {"code": impossible}))))


def test_machine_with_a_long_pattern_creates_records(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[str] = []
    create = ClusterImpl.create

    def counting(self: ClusterImpl, i: int, collection: str, rid: str, values: dict[str, object]) -> bool:
        created.append(rid)
        return create(self, i, collection, rid, values)

    monkeypatch.setattr(ClusterImpl, "create", counting)
    # (50 runs: with the stale_form rule added, 30 runs made 25)
    _run(replica_machine(Schema(Collection("wo", {"code": WORK_ORDER}))), examples=50)
    assert len(created) >= 30


def test_machine_edits_the_records_it_has(monkeypatch: pytest.MonkeyPatch) -> None:
    """Increments, deletes and restores find a record whenever some replica holds one, with 2 replicas too
    (they used to pick a replica first and give up when it held none), and runs are not given up."""
    missed: list[bool] = []
    existing = ReplicaMachine._existing

    def checking(self: ReplicaMachine, data: st.DataObject) -> tuple[int, str, str] | None:
        held = any(r.query(c.name, include_deleted=True) for r in self.c.replicas for c in self.c.schema)
        picked = existing(self, data)
        missed.append(held and picked is None)
        return picked

    monkeypatch.setattr(ReplicaMachine, "_existing", checking)
    schema = Schema(Collection("a", {"n": Counter()}), Collection("b", {"n": Counter()}))
    _run(replica_machine(schema, min_replicas=2, max_replicas=2), examples=50)
    assert len(missed) >= 100 and not any(missed)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts open files in /proc")
def test_machine_on_sqlite_files_closes_them() -> None:
    before = _fds()
    _run(replica_machine(Schema(Collection("a", {"name": Str(), "n": Counter()})), store="sqlite"),
         examples=10, steps=10)
    assert _fds() <= before


def test_cluster_close_releases_sqlite_files(tmp_path: Path) -> None:
    before = _fds()
    with Cluster(Schema(Collection("a", {"name": Str()})), 3,
                 store=lambda i: SQLiteStore(tmp_path / f"d{i}.db")) as c:
        c.create(0, "a", "r0", {"name": "x"})
        c.settle()
        c.check()
        assert _fds() > before
    assert all(r.closed for r in c.replicas) and _fds() <= before


def test_replica_machine_refuses_an_unknown_store() -> None:
    with pytest.raises(ValueError, match="store"):
        replica_machine(None, store="postgres")  # type: ignore[arg-type]


_SET_OPS = """
from crdtsync import Collection, Schema, Set, Str
from crdtsync.testing import Cluster
c = Cluster(Schema(Collection("a", {"tags": Set(Str())})), 2)
c.create(0, "a", "r0", {"tags": frozenset(["alpha", "beta", "gamma", "delta", "epsilon"])})
c.update(0, "a", "r0", {"tags": frozenset(["zeta", "eta"])})
print([(op.id, op.element, op.add) for op in c.set_ops])
"""


def test_the_oracle_does_not_depend_on_string_hashing() -> None:
    """What the oracle records, in what order, is the same in every process (set elements are handled in
    encoded order, not in set order, which follows PYTHONHASHSEED)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    outs = {subprocess.run([sys.executable, "-c", _SET_OPS], capture_output=True, text=True, check=True, cwd=root,
                           env={**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": str(h)}).stdout
            for h in (1, 2, 3)}
    assert len(outs) == 1, outs
