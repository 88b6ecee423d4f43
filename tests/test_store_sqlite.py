"""SQLiteStore passes the shared byte store suite, on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdtsync.store import SQLiteStore
from crdtsync.store.conformance import ByteStoreConformance, StoreFactory


class TestSQLiteStore(ByteStoreConformance):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return StoreFactory(lambda name: SQLiteStore(tmp_path / f"{name}.db"), persistent=True, thread_safe=True)
