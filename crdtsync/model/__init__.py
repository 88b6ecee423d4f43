"""The record model: per-field CRDT records on pycrdt, with no I/O."""

from .record import RecordDoc, text_edits
from .slots import DELETED, Slot, frontier, winner
from .state import Candidate, Conflict, HistoryEntry, RecordState, compute_state

__all__ = ["DELETED", "Candidate", "Conflict", "HistoryEntry", "RecordDoc", "RecordState", "Slot",
           "compute_state", "frontier", "text_edits", "winner"]
