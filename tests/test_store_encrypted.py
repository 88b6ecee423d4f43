"""EncryptedStore passes the shared byte store suite, over MemoryStore and over SQLiteStore."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdtsync.store import EncryptedStore, MemoryStore, SQLiteStore
from crdtsync.store.conformance import ByteStoreConformance, StoreFactory

KEY = bytes(range(32))


class TestEncryptedMemoryStore(ByteStoreConformance):
    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        return StoreFactory(lambda name: EncryptedStore(MemoryStore(), KEY))


class TestEncryptedSQLiteStore(ByteStoreConformance):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return StoreFactory(lambda name: EncryptedStore(SQLiteStore(tmp_path / f"{name}.db"), KEY),
                            persistent=True, thread_safe=True)
