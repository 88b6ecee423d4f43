"""crdtsync's testing kit: Hypothesis strategies, a simulated cluster with a no-lost-write oracle, and a
replica state machine to point at your own schema. See docs/testing.md.
"""

from .cluster import Cluster, Message, Write
from .machine import ReplicaMachine, replica_machine
from .strategies import (
    Op,
    OpKind,
    collections,
    edit_histories,
    field_types,
    field_values,
    invalid_values,
    record_ids,
    records,
    schemas,
    update_values,
)

__all__ = ["Cluster", "Message", "Op", "OpKind", "ReplicaMachine", "Write", "collections", "edit_histories",
           "field_types", "field_values", "invalid_values", "record_ids", "records", "replica_machine",
           "schemas", "update_values"]
