"""The schema the benchmarks' relays and devices share (``--schema bench.schema:SCHEMA``)."""

from __future__ import annotations

from crdtsync.schema import Collection, Int, Schema, Str, Text

__all__ = ["SCHEMA"]

SCHEMA = Schema(
    Collection("accounts", {"name": Str(required=True, max_length=120), "employees": Int(min=0),
                            "city": Str(max_length=80), "notes": Text()}),
)
