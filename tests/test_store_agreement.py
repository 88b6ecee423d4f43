"""Every byte store backend answers the same random operations the same way (and like a dict)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from crdtsync.store import Batch, EncryptedStore, MemoryStore, SQLiteStore
from crdtsync.store.agreement import agreement_machine, model_range, run_agreement
from crdtsync.store.conformance import CHECKS, ByteStoreConformance, ConformanceError, StoreFactory, run_conformance

KEY = bytes(range(32))


@pytest.fixture
def every_backend(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, StoreFactory]:
    factories = {
        "memory": StoreFactory(lambda n: MemoryStore()),
        "sqlite": StoreFactory(lambda n: SQLiteStore(tmp_path / f"{n}.db", synchronous="NORMAL"), persistent=True),
        "encrypted-memory": StoreFactory(lambda n: EncryptedStore(MemoryStore(), KEY)),
        "encrypted-sqlite": StoreFactory(
            lambda n: EncryptedStore(SQLiteStore(tmp_path / f"e{n}.db", synchronous="NORMAL"), KEY), persistent=True),
    }
    try:
        conninfo: str = request.getfixturevalue("pg_server")
    except pytest.skip.Exception:
        conninfo = ""  # the postgres tests say why they skip
    if conninfo:
        from crdtsync.store.postgres import PostgresStore

        schema = f"agree_{uuid.uuid4().hex[:12]}"
        factories["postgres"] = StoreFactory(lambda n: PostgresStore(conninfo, schema=schema, table=n),
                                             persistent=True)
    return factories


def test_every_backend_agrees(every_backend: dict[str, StoreFactory]) -> None:
    run_agreement(every_backend, max_examples=25, steps=20)


@pytest.mark.skipif(not os.environ.get("CRDTSYNC_LONG"), reason="long run: set CRDTSYNC_LONG=1")
def test_every_backend_agrees_long(every_backend: dict[str, StoreFactory]) -> None:
    run_agreement(every_backend, max_examples=400, steps=50)


class _SavesFirst(MemoryStore):
    """A broken backend: it applies a batch's saves before its removes, and not atomically."""

    def commit(self, batch: Batch) -> None:
        super().commit(Batch(saves=batch.saves))
        super().commit(Batch(removes=batch.removes, range_removes=batch.range_removes))


class _NoPrefixBoundary(MemoryStore):
    """A broken backend: ("a",) also matches ("ab",), as a naive string prefix scan would."""

    def load_range(self, prefix: tuple[str | int, ...], **kw: object) -> list[tuple[tuple[str | int, ...], bytes]]:
        rows = super().load_range((), **kw)  # type: ignore[arg-type]
        return [(k, v) for k, v in rows if "\x1f".join(map(str, k)).startswith("\x1f".join(map(str, prefix)))]


def test_the_suite_catches_broken_backends() -> None:
    with pytest.raises(ConformanceError, match="batch_semantics"):
        run_conformance(StoreFactory(lambda n: _SavesFirst()))
    with pytest.raises(ConformanceError, match=r"key_segments|prefix_semantics"):
        run_conformance(StoreFactory(lambda n: _NoPrefixBoundary()))


def test_the_machine_catches_a_broken_backend() -> None:
    machine = agreement_machine({"memory": StoreFactory(lambda n: MemoryStore()),
                                 "broken": StoreFactory(lambda n: _SavesFirst())})
    quick = settings(max_examples=100, stateful_step_count=20, derandomize=True, database=None, deadline=None,
                     phases=[Phase.generate])  # no shrinking: only whether it is caught matters here
    with pytest.raises(ConformanceError, match="broken"):
        run_state_machine_as_test(machine, settings=quick)


def test_run_conformance_runs_every_check_and_the_mixin_has_a_test_per_check() -> None:
    assert run_conformance(lambda n: MemoryStore(), skip=("agrees_with_model",)) == [
        c for c in CHECKS if c != "agrees_with_model"]
    assert {f"test_{c}" for c in CHECKS} == {m for m in vars(ByteStoreConformance) if m.startswith("test_")}


def test_model_range_orders_by_segments_not_bytes() -> None:
    model = {("b",): b"1", (1,): b"2", ("a", 5): b"3", ("a",): b"4", ("a", "z"): b"5", ("ab",): b"6"}
    assert [k for k, _ in model_range(model, ())] == [("a",), ("a", "z"), ("a", 5), ("ab",), ("b",), (1,)]
    assert [k for k, _ in model_range(model, ("a",), start=("a", "z"), reverse=True)] == [("a", "z"), ("a",)]
    assert agreement_machine({"m": StoreFactory(lambda n: MemoryStore())}).__name__ == "StoreAgreement"


def test_run_conformance_passes_sqlite_through_a_persistent_factory(tmp_path: Path) -> None:
    """As docs/storage.md shows it: every check opens names of its own, so a persistent store carries no
    data from one check into the next."""
    f = StoreFactory(lambda name: SQLiteStore(tmp_path / name, synchronous="NORMAL"), persistent=True,
                     thread_safe=True)
    assert run_conformance(f, skip=("agrees_with_model",))[-2:] == ["closed", "threads"]


class _Kept(MemoryStore):
    """A broken backend: one store for every name, never closed (so every name shares its data)."""

    def close(self) -> None:
        pass


def test_a_failure_shows_a_bounded_excerpt_of_what_the_store_held() -> None:
    shared = _Kept()  # the round trip's 3 MB values are still there for the next check
    with pytest.raises(ConformanceError) as e:
        run_conformance(lambda n: shared)
    message = str(e.value)
    assert message.startswith("[overwrite_and_remove] store after removing everything: got [(('val', 0), b'')")
    assert len(message) < 3000 and "characters in all)" in message


def test_run_agreement_takes_bare_callables_as_run_conformance_does(tmp_path: Path) -> None:
    run_agreement({"sqlite": lambda n: SQLiteStore(tmp_path / n, synchronous="NORMAL"),
                   "memory": lambda n: MemoryStore()}, max_examples=5, steps=10)
