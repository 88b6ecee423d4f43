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

__all__ = ["ClientBindings", "decode_sv", "missing_clients", "sv_clients", "sv_is_empty", "update_clients"]

BindingKey = tuple[str, str, int]


def sv_clients(before: bytes, after: bytes) -> list[int]:
    """The clients whose clock moved between two encoded state vectors of one document."""
    if after == before:
        return []
    old = decode_sv(before)
    return [c for c, clock in decode_sv(after).items() if clock > old.get(c, 0)]


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
    return not any(decode_sv(sv).values())


def missing_clients(update: bytes, sv: bytes) -> list[int]:
    """The Yjs clients some of whose writes ``update`` builds on and a document with state vector ``sv``
    lacks (why it cannot be integrated there): items it places next to or inside, items it deletes, and
    the earlier writes of its own clients. Read off the update (Yjs v1: per client, its structs, each an
    info byte, origins and parent as ids, then its content; then the delete set); [] for one it cannot
    read. Only for telling a user whose writes a held change waits for: the relay's checks never use it."""
    try:
        have = decode_sv(sv)
        r = _YReader(update)
        missing: set[int] = set()

        def need(client: int, clock: int) -> None:
            if clock >= have.get(client, 0):
                missing.add(client)

        for _ in range(r.uint()):
            structs, client, clock = r.uint(), r.uint(), r.uint()
            if clock > have.get(client, 0):
                missing.add(client)  # a gap before this client's first write here
            for _ in range(structs):
                info = r.byte()
                kind = info & 0x1F
                if kind in (0, 10):  # GC, Skip
                    r.uint()
                    continue
                if info & 0x80:  # left origin
                    need(r.uint(), r.uint())
                if info & 0x40:  # right origin
                    need(r.uint(), r.uint())
                if not info & 0xC0:  # no origin: the parent is written out
                    if r.uint() == 1:
                        r.skip(r.uint())  # a root type's name
                    else:
                        need(r.uint(), r.uint())
                    if info & 0x20:
                        r.skip(r.uint())  # the key in a map
                r.content(kind)
        for _ in range(r.uint()):  # the delete set: client, then its ranges (clock, length)
            client = r.uint()
            for _ in range(r.uint()):
                clock, length = r.uint(), r.uint()
                if clock + length > have.get(client, 0):
                    missing.add(client)
    except (ValueError, IndexError, RecursionError):
        return []
    return sorted(missing)


class _YReader:
    """Just enough of lib0's decoding to step through a Yjs v1 update (``missing_clients``)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uint(self) -> int:
        n = shift = 0
        while True:
            b = self.byte()
            n |= (b & 0x7F) << shift
            if b < 0x80:
                return n
            shift += 7
            if shift > 70:
                raise ValueError("overlong varuint")

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise ValueError("truncated")
        self.pos += n

    def content(self, kind: int) -> None:
        if kind == 1:  # deleted: a length
            self.uint()
        elif kind == 2:  # JSON: strings
            for _ in range(self.uint()):
                self.skip(self.uint())
        elif kind in (3, 4, 5):  # binary, string, embed (JSON as a string)
            self.skip(self.uint())
        elif kind == 6:  # format: key and value
            self.skip(self.uint())
            self.skip(self.uint())
        elif kind == 7:  # type: its kind, and for an XML element or hook a name
            if self.uint() in (3, 5):
                self.skip(self.uint())
        elif kind == 8:  # any: values
            for _ in range(self.uint()):
                self.any()
        elif kind == 9:  # a subdocument: its guid and options
            self.skip(self.uint())
            self.any()
        else:
            raise ValueError(f"unknown content {kind}")

    def any(self) -> None:
        tag = self.byte()
        if tag in (127, 126, 121, 120):  # undefined, null, false, true
            return
        if tag == 125:  # a signed varint: the same continuation bit
            while self.byte() & 0x80:
                pass
        elif tag == 124:
            self.skip(4)
        elif tag in (123, 122):
            self.skip(8)
        elif tag in (119, 116):  # a string, bytes
            self.skip(self.uint())
        elif tag == 118:  # an object: key and value pairs
            for _ in range(self.uint()):
                self.skip(self.uint())
                self.any()
        elif tag == 117:  # an array
            for _ in range(self.uint()):
                self.any()
        else:
            raise ValueError(f"unknown value tag {tag}")


def decode_sv(sv: bytes) -> dict[int, int]:
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
