"""MemoryStore passes the shared byte store suite."""

from __future__ import annotations

import pytest

from crdtsync.store import MemoryStore
from crdtsync.store.conformance import ByteStoreConformance, StoreFactory


class TestMemoryStore(ByteStoreConformance):
    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        return StoreFactory(lambda name: MemoryStore())
