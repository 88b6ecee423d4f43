"""What no Yjs client writes: a Yjs v1 update read struct by struct, sans I/O, for what Yrs lets through.

Yrs (pycrdt) reads an update whose items cannot exist, and keeps them pending for good: an item whose
origin, right origin or parent is an item of its own client at its own clock or later. A client gives its
items clocks in the order it makes them, and an item's origin, right origin and parent are items that
existed when it was made (a nested type's item comes before the items inside it), so each of them, if of
the same client, has a lower clock. A Yjs client that receives such an item throws while integrating it
(``findIndexSS``: "Cannot read properties of undefined", or "Unexpected case") and keeps nothing of the
update it came in. Likewise a deleted range of length 0, which Yjs throws on when it keeps the range
pending. ``structure_error`` finds these, so that the room refuses them before storing anything.

The reading follows Yrs's (y-crdt ``Update::decode``), not Yjs's, where they differ: the content kind is
the info byte's low four bits, a JSON content holds one string more than its count says, an item of
length 0 is dropped without moving the clock, and strings are not checked for UTF-8. Whatever this cannot
read (an unknown kind, a truncated update, a string that is not UTF-8) gets no verdict here: Yrs judges it.
"""

from __future__ import annotations

__all__ = ["structure_error"]

_MAX_U32 = 2**32 - 1
_MAX_U64 = 2**64 - 1


class _Unreadable(Exception):
    """This reader cannot go on (Yrs may or may not read the update: not ours to judge)."""


def structure_error(update: bytes) -> str | None:
    """Why no Yjs client could have written ``update`` (see the module docstring), or None."""
    try:
        return _Scan(update).run()
    except (_Unreadable, IndexError):
        return None


class _Scan:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def var(self, limit: int = _MAX_U32) -> int:
        data = self.data
        pos = self.pos
        b = data[pos]
        pos += 1
        if b < 0x80:
            self.pos = pos
            return b
        n = b & 0x7F
        shift = 7
        while True:
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift > 70:
                raise _Unreadable
        if n > limit:
            raise _Unreadable
        self.pos = pos
        return n

    def skip_bytes(self) -> None:
        n = self.var()
        if self.pos + n > len(self.data):
            raise _Unreadable
        self.pos += n

    def utf16_length(self) -> int:
        """Read a string; returns its length in UTF-16 units, as Yjs counts a text's characters."""
        n = self.var()
        end = self.pos + n
        if end > len(self.data):
            raise _Unreadable
        raw = self.data[self.pos:end]
        self.pos = end
        if raw.isascii():
            return n
        try:
            return len(raw.decode("utf-8").encode("utf-16-le")) // 2
        except UnicodeDecodeError:
            raise _Unreadable from None

    def skip_any(self) -> None:
        tag = self.data[self.pos]
        self.pos += 1
        if tag >= 126 or tag in (121, 120):  # undefined, null, false, true
            return
        if tag == 125:
            self.var(_MAX_U64)  # a signed varint: its bytes are varuint-shaped
        elif tag == 124:
            self.pos += 4
        elif tag in (123, 122):
            self.pos += 8
        elif tag in (119, 116):
            self.skip_bytes()
        elif tag == 118:
            for _ in range(self.var()):
                self.skip_bytes()
                self.skip_any()
        elif tag == 117:
            for _ in range(self.var()):
                self.skip_any()
        else:
            raise _Unreadable
        if self.pos > len(self.data):
            raise _Unreadable

    def content(self, info: int) -> int:
        """Read an item's content; returns its length (in clock ticks: UTF-16 units for a string)."""
        kind = info & 0x0F
        if kind == 4:  # string
            return self.utf16_length()
        if kind == 8:  # any
            n = self.var()
            for _ in range(n):
                self.skip_any()
            return n
        if kind == 1:  # deleted
            return self.var()
        if kind == 7:  # type
            ref = self.data[self.pos]
            self.pos += 1
            if ref == 3:  # XML element: its name
                self.skip_bytes()
            elif ref not in (0, 1, 2, 4, 5, 6, 7, 15):
                raise _Unreadable
            return 1
        if kind in (3, 5):  # binary, embed (JSON text)
            self.skip_bytes()
            return 1
        if kind == 6:  # format: key, JSON text
            self.skip_bytes()
            self.skip_bytes()
            return 1
        if kind == 2:  # JSON: Yrs reads one string more than the count
            n = self.var()
            for _ in range(n + 1):
                self.skip_bytes()
            return n + 1
        if kind == 9:  # subdocument: guid, options
            self.skip_bytes()
            self.skip_any()
            return 1
        raise _Unreadable

    def run(self) -> str | None:
        for _ in range(self.var()):
            structs = self.var()
            client = self.var(_MAX_U64)
            clock = self.var()
            for _ in range(structs):
                info = self.data[self.pos]
                self.pos += 1
                if info == 0 or info == 10:  # GC, skip
                    clock += self.var()
                    continue
                own: list[tuple[str, int]] = []
                if info & 0x80:
                    if self.var(_MAX_U64) == client:
                        own.append(("origin", self.var()))
                    else:
                        self.var()
                if info & 0x40:
                    if self.var(_MAX_U64) == client:
                        own.append(("right origin", self.var()))
                    else:
                        self.var()
                if not info & 0xC0:
                    if self.var() == 1:
                        self.skip_bytes()  # a root type's name
                    elif self.var(_MAX_U64) == client:
                        own.append(("parent", self.var()))
                    else:
                        self.var()
                    if info & 0x20:
                        self.skip_bytes()  # the key in a map
                length = self.content(info)
                for what, at in own:
                    if at >= clock and length:
                        return f"the {what} of item {client}:{clock} is a later clock of its client ({at})"
                clock += length
        for _ in range(self.var()):
            client = self.var(_MAX_U64)
            for _ in range(self.var()):
                self.var()
                if self.var() == 0:
                    return f"a deleted range of length 0 (client {client})"
        return None
