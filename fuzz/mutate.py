"""Byte-level mutations for the seeded fuzz loop: flips, truncations, splices, repeated chunks, varint
edge values. Deterministic for a given ``random.Random``."""

from __future__ import annotations

import random

__all__ = ["mutate"]

_INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff\x0f",
                b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"]


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # truncate
            del buf[rng.randrange(len(buf)):]
        elif op == 2:  # insert an interesting value
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = rng.choice(_INTERESTING)
        elif op == 3 and buf:  # overwrite a byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 4 and corpus:  # splice with another entry
            other = rng.choice(corpus)
            i, j = rng.randrange(len(buf) + 1), rng.randrange(len(other) + 1)
            buf = buf[:i] + other[j:]
        elif op == 5 and buf:  # duplicate a chunk
            i = rng.randrange(len(buf))
            j = min(len(buf), i + rng.randint(1, 32))
            buf[j:j] = buf[i:j]
        elif op == 6:  # random bytes
            buf = bytearray(rng.randbytes(rng.randint(0, 64)))
    return bytes(buf)
