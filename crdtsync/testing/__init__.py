"""crdtsync's testing kit: Hypothesis strategies, a simulated cluster with a no-lost-write oracle, and a
replica state machine to point at your own schema. See docs/testing.md.
"""

from .cluster import Cluster, Form, Message, SaveForm, Write, save_with_base
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

__all__ = ["Cluster", "Form", "Message", "Op", "OpKind", "ReplicaMachine", "SaveForm", "Write", "collections",
           "edit_histories", "field_types", "field_values", "invalid_values", "record_ids", "records",
           "replica_machine", "save_with_base", "schemas", "update_values"]
