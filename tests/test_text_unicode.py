"""Text fields with non-ASCII characters: pycrdt indexes Y.Text by UTF-8 bytes, crdtsync by characters."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync import Collection, Replica, Schema, Text
from crdtsync.model.record import RecordDoc

SCHEMA = Schema(Collection("notes", {"body": Text()}))
ALPHABET = st.sampled_from(list("ab é😀ü\nß中"))


@settings(derandomize=True, max_examples=150, deadline=None)
@given(st.lists(st.text(ALPHABET, max_size=25), min_size=1, max_size=8))
def test_every_text_write_reads_back_exactly(texts: list[str]) -> None:
    doc = RecordDoc(SCHEMA["notes"], "n1", writer="w", device="w", user="u", client_id=7)
    for i, text in enumerate(texts):
        doc.write({"body": text}, 1000 + i)
        assert str(doc.text("body")) == text


def test_concurrent_non_ascii_edits_both_survive() -> None:
    a = Replica.open(":memory:", SCHEMA, device="a", user="ua")
    b = Replica.open(":memory:", SCHEMA, device="b", user="ub")
    rid = a.create("notes", {"body": "Grüße aus Köln 😀"})
    b.import_updates(a.export_updates())
    a.update("notes", rid, {"body": "Viele Grüße aus Köln 😀"})
    b.update("notes", rid, {"body": "Grüße aus Köln 😀 und München"})
    a.import_updates(b.export_updates())
    b.import_updates(a.export_updates())
    ra, rb = a.get("notes", rid), b.get("notes", rid)
    assert ra is not None and rb is not None
    assert ra.fields["body"] == rb.fields["body"] == "Viele Grüße aus Köln 😀 und München"
