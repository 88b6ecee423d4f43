"""The exceptions crdtsync raises.

Errors split the way h11 splits them: ``LocalError`` means *you* misused the API (a write that breaks the
schema, a record that does not exist, a wrong key); ``RemoteError`` means a *peer* sent something we cannot
accept (garbage bytes, an update that breaks the schema, a refusal from the relay). Every error carries a
message that says what to do about it.

::

    CrdtSyncError
    ├── LocalError                      the caller misused the API
    │   ├── ValidationError             a write breaks the schema (nothing was stored)
    │   ├── SchemaError                 the schema itself is malformed
    │   ├── RecordNotFound              no such record
    │   ├── RecordExists                create() with an id that is already taken
    │   ├── RecordDeleted               update() of a deleted record (restore it first)
    │   ├── RecordBlocked               the record holds an errored change: fix or discard it first
    │   ├── NoSuchConflict              resolve() of a field that has no open conflict
    │   ├── StoreClosed                 the replica or store was closed
    │   ├── StoreInUse                  the store file is open already (in this process or another)
    │   ├── StrategyMismatch            records written under a strategy of another document layout
    │   └── EncryptionError             the store is encrypted and the key is missing
    │       └── WrongKeyError           the key does not open this store
    ├── RemoteError                     a peer sent something we cannot accept
    │   ├── MalformedUpdate             bytes that do not decode (nothing was applied)
    │   ├── RemoteValidationError       an update whose content breaks the schema (nothing was applied)
    │   ├── RemoteProtocolError         a frame that breaks the sync protocol
    │   └── Rejected                    the relay refused a change (invalid, forbidden, gone)
    ├── StoreError                      the local store failed a write (nothing of the write was kept)
    │   └── StoreFull                   its disk is full: free space, then write again
    ├── LocalProtocolError              the sync protocol API was driven in the wrong order
    └── SyncError                       a sync run failed (offline, auth refused, timed out)
        ├── AuthError                   the relay refused the token
        └── StoreBehind                 the relay has later changes of this device than this store sent
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "CrdtSyncError",
    "EncryptionError",
    "LocalError",
    "LocalProtocolError",
    "MalformedUpdate",
    "NoSuchConflict",
    "RecordBlocked",
    "RecordDeleted",
    "RecordExists",
    "RecordNotFound",
    "Rejected",
    "RemoteError",
    "RemoteProtocolError",
    "RemoteValidationError",
    "SchemaError",
    "StoreBehind",
    "StoreClosed",
    "StoreError",
    "StoreFull",
    "StoreInUse",
    "StrategyMismatch",
    "SyncError",
    "ValidationError",
    "WrongKeyError",
]


class CrdtSyncError(Exception):
    """Root of every error crdtsync raises on purpose."""


class LocalError(CrdtSyncError):
    """The caller misused the API; nothing was changed."""


class SchemaError(LocalError):
    """The schema is malformed (unknown type, bad limits, unknown collection in a Ref...)."""


class ValidationError(LocalError):
    """A value breaks the schema. Raised before anything is stored.

    ``collection``, ``record`` and ``field`` say where; ``reason`` says what is wrong.
    """

    def __init__(self, collection: str, record: str | None, field: str | None, reason: str) -> None:
        self.collection = collection
        self.record = record
        self.field = field
        self.reason = reason
        where = collection
        if record is not None:
            where += f"/{record}"
        if field is not None:
            where += f".{field}"
        super().__init__(f"{where}: {reason}")


class RecordNotFound(LocalError):
    """No record with this id in this collection."""


class RecordExists(LocalError):
    """``create()`` was given an id that already names a record."""


class RecordDeleted(LocalError):
    """The record is deleted; ``restore()`` it before editing it."""


class RecordBlocked(LocalError):
    """The record has a change the relay rejected; fix or discard it before editing further."""


class NoSuchConflict(LocalError):
    """``resolve()`` was called for a field that has no open conflict and no such field exists."""


class StoreClosed(LocalError):
    """The replica or store was closed."""


class StoreInUse(LocalError):
    """The store file is open already, through another ``Replica`` or ``SQLiteStore``, in this process or
    another. Two handles on one file would each keep their own view of it and lose each other's writes;
    close the other one first. ``path`` names the file. Nothing was read or changed."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path} is open already (in this process or another): one Replica or SQLiteStore "
                         "per file at a time; close the other one first")


class StrategyMismatch(LocalError):
    """The records of a collection were written under a strategy whose document layout the schema's strategy
    cannot read (``crdt`` and ``lww-field`` write per-field slots, ``lww-record`` and ``lww-patch`` drafts:
    docs/strategies.md, "Switching strategies"). ``Replica.open`` raises it before changing anything when
    the schema gives a collection a strategy of the other layout than the store's; a write raises it for a
    record whose document holds the other layout's content (a store switched by a crdtsync from before the
    check), and nothing is written. ``collection``, ``record`` (None: the whole collection), ``held`` (the
    strategy the store holds, or its layout's strategies when only the layout is known) and ``asked`` (the
    schema's) say which."""

    def __init__(self, collection: str, record: str | None, held: str, asked: str, message: str) -> None:
        self.collection = collection
        self.record = record
        self.held = held
        self.asked = asked
        super().__init__(message)


class EncryptionError(LocalError):
    """The store is encrypted and no key was given, or a key was given for a plain store."""


class WrongKeyError(EncryptionError):
    """The key given does not decrypt this store. Nothing was read or changed."""


class StoreError(CrdtSyncError):
    """The local store failed a write: neither the caller's mistake nor a peer's (the disk, the database
    server). Nothing of the write was kept: the replica is as it was before it, and usable. ``path`` names
    the store (its file), ``__cause__`` is the store's own error."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"{path}: {reason}")


class StoreFull(StoreError):
    """The disk (or database) holding the store is full. Nothing of the write was kept; free some space
    and write again."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "the disk is full: nothing of this write was stored; free some space and write "
                               "again")


class RemoteError(CrdtSyncError):
    """A peer sent something we cannot accept; nothing of it was applied."""


class MalformedUpdate(RemoteError):
    """Bytes that do not decode as a crdtsync export or a Yjs update."""


class RemoteValidationError(RemoteError):
    """An update from a peer whose content breaks the schema: at the relay, a value its rules refuse or a
    field it lacks; in a device's merge (which checks structure, not rules: ``model/checks.py``), malformed
    content or a collection the schema lacks."""

    def __init__(self, collection: str, record: str, field: str | None, reason: str) -> None:
        self.collection = collection
        self.record = record
        self.field = field
        self.reason = reason
        where = f"{collection}/{record}" + (f".{field}" if field else "")
        super().__init__(f"{where}: {reason}")


class RemoteProtocolError(RemoteError):
    """A frame from the peer breaks the sync protocol; the session ends with this reason."""


class Rejected(RemoteError):
    """The relay refused a change. ``code`` is ``invalid``, ``forbidden`` or ``gone``."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


class LocalProtocolError(CrdtSyncError):
    """The protocol object was driven in an order its state machine does not allow."""


class SyncError(CrdtSyncError):
    """A sync run failed; ``reason`` is what an app can show."""


class AuthError(SyncError):
    """The relay refused the device's token."""


class StoreBehind(SyncError):
    """The relay holds a change of this device (by its id) later than any this store had acknowledged and
    not one this store holds: the store is not the device's latest (restored from a backup, or copied), or
    another installation uses the same device id. Its Yjs client ids would then collide with those of the
    changes it lacks, and what it writes would be lost: the client stops instead. Open a new store (a new
    device id, or the same id after removing this store) and re-enter the pending changes it lists
    (``Replica.pending()``; ``export_updates`` keeps them)."""
