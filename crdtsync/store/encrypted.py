"""Encryption at rest: a byte store wrapper that seals every value with AES-GCM.

The app provides the key: 16, 24 or 32 raw bytes, or a passphrase (str) stretched with scrypt and a
random salt kept beside the data. Each value gets a fresh 96-bit nonce, and its key is bound in as
associated data, so values cannot be swapped between keys unnoticed. Keys themselves (collection names,
record ids, sequence numbers) are not encrypted: they order the data. Opening with the wrong key raises
``WrongKeyError`` before anything is read or written.

The salt and key check live under the reserved key ``("_crypto",)``: the wrapper never shows it, refuses
writes to it, and keeps it through a ``remove_range`` that covers it (such as ``remove_range(())``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import EncryptionError, WrongKeyError
from .base import Batch, ByteStore
from .keys import Key, encode_key

__all__ = ["CRYPTO_KEY", "EncryptedStore", "is_encrypted"]

CRYPTO_KEY: Key = ("_crypto",)
_CHECK = b"crdtsync key check v1"


def is_encrypted(store: ByteStore) -> bool:
    return store.load(CRYPTO_KEY) is not None


def _derive(key: bytes | str, salt: bytes) -> bytes:
    if isinstance(key, str):
        if not key:
            raise EncryptionError("an empty passphrase is not a key")
        return Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(key.encode("utf-8"))
    if len(key) not in (16, 24, 32):
        raise EncryptionError(f"a raw key must be 16, 24 or 32 bytes, not {len(key)}")
    return bytes(key)


class EncryptedStore(ByteStore):
    """Wraps ``inner``; values are encrypted before they reach it and checked when read back."""

    def __init__(self, inner: ByteStore, key: bytes | str) -> None:
        self.inner = inner
        meta_raw = inner.load(CRYPTO_KEY)
        if meta_raw is None:
            if inner.load_range((), limit=1):
                raise EncryptionError("this store holds unencrypted data: open it without a key (no key opens it)")
            salt = os.urandom(16)
            self._aead = AESGCM(_derive(key, salt))
            meta = {"v": 1, "kdf": "scrypt" if isinstance(key, str) else "raw", "salt": salt.hex(),
                    "check": self._seal(CRYPTO_KEY, _CHECK).hex()}
            self._meta = orjson.dumps(meta)
            inner.save(CRYPTO_KEY, self._meta)
            return
        self._meta = meta_raw
        meta = orjson.loads(meta_raw)
        kind = "scrypt" if isinstance(key, str) else "raw"
        if meta.get("kdf") != kind:
            raise WrongKeyError(f"this store was encrypted with a {meta.get('kdf')} key, not a {kind} key")
        self._aead = AESGCM(_derive(key, bytes.fromhex(meta["salt"])))
        try:
            ok = self._open(CRYPTO_KEY, bytes.fromhex(meta["check"])) == _CHECK
        except InvalidTag:
            ok = False
        if not ok:
            raise WrongKeyError("the key does not open this store")

    def _seal(self, key: Key, data: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, data, encode_key(key))

    def _open(self, key: Key, data: bytes) -> bytes:
        return self._aead.decrypt(data[:12], data[12:], encode_key(key))

    def _read(self, key: Key, data: bytes) -> bytes:
        try:
            return self._open(key, data)
        except InvalidTag:
            raise WrongKeyError(f"value under {key!r} does not decrypt: corrupted or tampered") from None

    def load(self, key: Key) -> bytes | None:
        if key == CRYPTO_KEY:
            return None
        data = self.inner.load(key)
        return None if data is None else self._read(key, data)

    def load_many(self, keys: Sequence[Key]) -> list[bytes | None]:
        return [None if v is None else self._read(k, v) for k, v in zip(keys, self.inner.load_many(keys), strict=True)]

    def load_range(self, prefix: Key, *, start: Key | None = None, limit: int | None = None,
                   reverse: bool = False) -> list[tuple[Key, bytes]]:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be 0 or more, not {limit}")
        # One more row than asked for, in case the hidden CRYPTO_KEY is among them.
        rows = self.inner.load_range(prefix, start=start, limit=None if limit is None else limit + 1,
                                     reverse=reverse)
        out = [(k, self._read(k, v)) for k, v in rows if k != CRYPTO_KEY]
        return out if limit is None else out[:limit]

    def load_ranges(self, prefixes: Sequence[Key]) -> list[list[tuple[Key, bytes]]]:
        return [[(k, self._read(k, v)) for k, v in rows if k != CRYPTO_KEY]
                for rows in self.inner.load_ranges(prefixes)]

    def commit(self, batch: Batch) -> None:
        self.inner.commit(self._sealed(batch))

    def begin_commit(self, batch: Batch) -> Callable[[], None]:
        return self.inner.begin_commit(self._sealed(batch))

    @property
    def sync_only(self) -> bool:  # type: ignore[override]
        return self.inner.sync_only

    def _sealed(self, batch: Batch) -> Batch:
        if CRYPTO_KEY in batch.saves or CRYPTO_KEY in batch.removes:
            raise ValueError(f"{CRYPTO_KEY!r} is reserved for the encryption metadata")
        sealed = Batch(saves={k: self._seal(k, v) for k, v in batch.saves.items()},
                       removes=set(batch.removes), range_removes=list(batch.range_removes))
        if any(CRYPTO_KEY[:len(p)] == p for p in batch.range_removes):
            sealed.saves[CRYPTO_KEY] = self._meta  # saves come after range removes: the key survives
        return sealed

    def close(self) -> None:
        self.inner.close()
