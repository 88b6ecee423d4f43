"""PostgresStore passes the shared byte store suite on a real server, and its LISTEN/NOTIFY works."""

from __future__ import annotations

import uuid

import pytest

from crdtsync.store import EncryptedStore
from crdtsync.store.conformance import ByteStoreConformance, StoreFactory
from crdtsync.store.postgres import PostgresStore


@pytest.fixture
def schema() -> str:
    """A schema of its own for each test, so tests share one database and nothing else."""
    return f"t_{uuid.uuid4().hex[:12]}"


class TestPostgresStore(ByteStoreConformance):
    @pytest.fixture
    def store_factory(self, pg_server: str, schema: str) -> StoreFactory:
        return StoreFactory(lambda name: PostgresStore(pg_server, schema=schema, table=name), persistent=True,
                            thread_safe=True)


class TestEncryptedPostgresStore(ByteStoreConformance):
    @pytest.fixture
    def store_factory(self, pg_server: str, schema: str) -> StoreFactory:
        return StoreFactory(lambda name: EncryptedStore(PostgresStore(pg_server, schema=schema, table=name),
                                                        bytes(32)), persistent=True, thread_safe=True)
