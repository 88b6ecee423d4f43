"""Byte stores: bytes under tuple keys. SQLite (default), in-memory, PostgreSQL, and an encrypting wrapper.

Every backend passes the shared suite in ``crdtsync.store.conformance`` (see docs/storage.md).
"""

from .base import Batch, ByteStore
from .encrypted import EncryptedStore, is_encrypted
from .keys import Key, decode_key, encode_key
from .memory import MemoryStore
from .postgres import PostgresStore
from .sqlite import SQLiteStore

__all__ = ["Batch", "ByteStore", "EncryptedStore", "Key", "MemoryStore", "PostgresStore", "SQLiteStore",
           "decode_key", "encode_key", "is_encrypted"]
