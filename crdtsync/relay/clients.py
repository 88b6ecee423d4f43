"""Which device writes under which Yjs client id, per record.

Every Yjs item carries the id of the client that made it and that client's clock. A device that wrote
items under another device's client id, at clocks that device has not used yet, would make the relay take
that device's next real change for one it already has (same client, same clocks): acknowledged, never
stored, silently lost, with the forger's content in its place. The slot and history checks cannot see this
(they look at what the items hold, not at who made them). So the relay binds each client id that writes to
a record to the first device that did, and refuses (``forbidden``) a change carrying items of a client id
bound to another device. Devices pick a random client id per record document and a fresh one after a
discard, so bindings are per record: two devices that happen to draw the same id for different records do
not collide. A binding is stored under ``("ycid", collection, record, client)`` with the change that made it.

The clients a change wrote are those whose clock it moved in the relay's copy of the record: exact, since
the relay integrates a change whole or not at all (it never keeps a change waiting for a missing one).
"""

from __future__ import annotations

from collections import OrderedDict

from ..store.base import Batch, ByteStore

__all__ = ["ClientBindings", "sv_clients", "sv_is_empty", "update_clients"]

BindingKey = tuple[str, str, int]


def sv_clients(before: bytes, after: bytes) -> list[int]:
    """The clients whose clock moved between two encoded state vectors of one document."""
    if after == before:
        return []
    old = _decode_sv(before)
    return [c for c, clock in _decode_sv(after).items() if clock > old.get(c, 0)]


def update_clients(update: bytes) -> list[int] | None:
    """The clients whose clock an update applied as a whole moved, read off its first bytes when that is
    quick: none for an update of no items, the one client of a one-client update; None otherwise (then ask
    ``sv_clients``). A Yjs v1 update starts with its number of clients, then the first client's number of
    items, its id and its first clock; the part new to a document (``Traced.new``) holds exactly the
    clients whose clock moved."""
    if not update:
        return None
    first = update[0]
    if first == 0:
        return []
    if first != 1:
        return None
    values: list[int] = []
    cur = shift = 0
    for b in update[1:12]:  # the count of items and the client id: two varuints, at most 5 + 5 bytes
        cur |= (b & 0x7F) << shift
        if b & 0x80:
            shift += 7
        else:
            values.append(cur)
            if len(values) == 2:
                return [cur] if values[0] else None
            cur = shift = 0
    return None


def sv_is_empty(sv: bytes) -> bool:
    """Whether an encoded state vector is that of a document with nothing in it. Yrs's state before a
    transaction already lists the clients it is about to write, at clock 0. A one-client vector ends with
    its clock, and Yrs writes varuints in the fewest bytes: the clock is 0 exactly when the last byte is."""
    if len(sv) <= 1:
        return True
    if sv[0] == 1:
        return sv[-1] == 0
    return not any(_decode_sv(sv).values())


def _decode_sv(sv: bytes) -> dict[int, int]:
    """An encoded state vector (as Yrs encodes it: a count, then client and clock varuints) as a dict.
    One pass over the bytes: a varuint read per method call cost five times as much, per change staged."""
    values: list[int] = []
    cur = shift = 0
    for b in sv:
        cur |= (b & 0x7F) << shift
        if b & 0x80:
            shift += 7
        else:
            values.append(cur)
            cur = shift = 0
    if shift or not values or len(values) != 1 + 2 * values[0]:
        raise ValueError(f"malformed state vector {sv!r}")
    it = iter(values[1:])
    return dict(zip(it, it, strict=True))


class ClientBindings:
    """The bindings, read through an LRU cache; new ones are staged with the change that makes them and
    only become visible to the store with its commit (``committed``) or are forgotten (``abandon``)."""

    def __init__(self, store: ByteStore, cache_size: int = 65536) -> None:
        self.store = store
        self.cache_size = cache_size
        self._cache: OrderedDict[BindingKey, str] = OrderedDict()
        self._staged: dict[BindingKey, tuple[str, int]] = {}  # with the log seq of the change staging it

    def owner(self, collection: str, record: str, client: int) -> str | None:
        key = (collection, record, client)
        staged = self._staged.get(key)
        if staged is not None:
            return staged[0]
        device = self._cache.get(key)
        if device is not None:
            self._cache.move_to_end(key)
            return device
        raw = self.store.load(("ycid", collection, record, client))
        if raw is None:
            return None
        device = raw.decode()
        self._remember(key, device)
        return device

    def stage(self, batch: Batch, collection: str, record: str, client: int, device: str, seq: int) -> None:
        key = (collection, record, client)
        self._staged[key] = (device, seq)
        batch.save(("ycid", collection, record, client), device.encode())

    def committed(self, durable: int) -> None:
        """The changes up to log seq ``durable`` are committed (a later write group may be staged)."""
        for key, (device, seq) in list(self._staged.items()):
            if seq <= durable:
                self._remember(key, device)
                del self._staged[key]

    def abandon(self) -> None:
        self._staged.clear()

    def _remember(self, key: BindingKey, device: str) -> None:
        self._cache[key] = device
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
