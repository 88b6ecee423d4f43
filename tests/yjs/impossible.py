"""Updates that Yrs reads and holds pending for good, and that make any Yjs client that gets them throw
while integrating (an empty document shown): what no Yjs client writes. Found by the explorer's mutation fuzz
of real Yjs updates (yjs 13.6.33), and one made by hand; each builds on the first ``prefix`` of ``EDITS``."""

from __future__ import annotations

__all__ = ["EDITS", "IMPOSSIBLE"]

#: real Yjs updates of one client (text, formats, map values of each kind, a nested map, an array, XML)
EDITS: tuple[bytes, ...] = tuple(bytes.fromhex(h) for h in (
    "0101aaa9851500040101740b68656c6c6f20776f726c6400",
    "0101aaa985150bc4aaa9851504aaa98515050620627261766500",
    "0001aaa98515010002",
    "0102aaa9851511c6aaa9851502aaa985150304626f6c640474727565c6aaa985150baaa985150c04626f6c64046e756c6c00",
    "0101aaa98515132801016d016e017d2a00",
    "0101aaa98515142801016d017301770373747200",
    "0101aaa98515152801016d016f017601016175037d017d02760101627e00",
    "0101aaa98515162301016d0362696e0301020300",
    "0101aaa98515172801016d0166017c3fc0000000",
    "0101aaa98515182801016d03626967017c5380000000",
    "0101aaa98515192701016d037375620100",
    "0101aaa985151a2800aaa9851519016b0177017600",
    "0102aaa985151b2700aaa98515190174020400aaa985151b05696e6e657200",
    "0101aaa9851521c4aaa985151daaa985151e02585800",
    "0101aaa985152308010161047d01770374776f787e00",
    "0101aaa9851527c8aaa9851523aaa9851524017703696e7300",
    "0001aaa98515012301",
    "0102aaa9851528070101780301702800aaa985152805636c6173730177016300",
))

#: (name, prefix, update, what the room says): the first is the hand-made one, the others the fuzz's
IMPOSSIBLE: list[tuple[str, int, bytes, str]] = [
    ("origin-ahead-21b", 0, bytes.fromhex("0101ffffffff0f0084ffffffff0f05044556494c00"), "origin"),
    ("fuzz-118", 14, bytes.fromhex("0101aaa9851523e1010161047d01770374776f787e00"), "length 0"),
    ("fuzz-263", 12, bytes.fromhex("0102aaa985151b2700aaa98515190174020400aaa985155905696e6e657200"), "parent"),
    ("fuzz-275", 17, bytes.fromhex("0102aaa9851528070101780301702800aaa985153505636c1973730177016300"), "parent"),
    ("fuzz-618", 18, bytes.fromhex("0102aaa985152a0700aaa9851528060400aaa985157f0374787400"), "parent"),
    ("fuzz-708", 1, bytes.fromhex("0101aaa985150bc4aaa9851544aaa98515050620627261766500"), "origin"),
    ("fuzz-1012", 15, bytes.fromhex("0101aaa9851527c8aaa9851563aaa9851524017703696e7300"), "origin"),
    ("fuzz-1030", 1, bytes.fromhex("0101aaa985150bc4aaa98515a704aaa98515050620627261766500"), "origin"),
]
