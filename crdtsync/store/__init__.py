"""Byte stores: bytes under tuple keys. SQLite (default), in-memory, and an encrypting wrapper."""

from .base import Batch, ByteStore
from .encrypted import EncryptedStore, is_encrypted
from .keys import Key, decode_key, encode_key
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = ["Batch", "ByteStore", "EncryptedStore", "Key", "MemoryStore", "SQLiteStore", "decode_key",
           "encode_key", "is_encrypted"]
