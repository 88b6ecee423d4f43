"""The record model: per-field CRDT records on pycrdt, with no I/O."""

from .drafts import DraftRecordDoc
from .lww import LwwFieldDoc
from .record import RecordDoc
from .slots import DELETED, Slot, frontier, winner
from .state import Candidate, Conflict, HistoryEntry, RecordState, compute_state
from .strategies import new_record_doc
from .textdiff import text_edits

__all__ = ["DELETED", "Candidate", "Conflict", "DraftRecordDoc", "HistoryEntry", "LwwFieldDoc", "RecordDoc",
           "RecordState", "Slot", "compute_state", "frontier", "new_record_doc", "text_edits", "winner"]
