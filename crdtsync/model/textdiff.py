"""Character diffs for text fields: a write of a whole new text becomes small edits, so concurrent edits
elsewhere in the text survive the merge. No I/O."""

from __future__ import annotations

import difflib

__all__ = ["text_edits"]

_DIFF_LIMIT = 20_000  # above this many characters, a single-region diff instead of difflib


def text_edits(old: str, new: str) -> list[tuple[int, int, str]]:
    """Edits ``(start, end, insert)`` turning ``old`` into ``new``, last first so indices stay valid.

    Small edits keep concurrent edits elsewhere in the text intact when merged.
    """
    if old == new:
        return []
    if len(old) + len(new) > _DIFF_LIMIT:
        p = 0
        while p < min(len(old), len(new)) and old[p] == new[p]:
            p += 1
        s = 0
        while s < min(len(old), len(new)) - p and old[-1 - s] == new[-1 - s]:
            s += 1
        return [(p, len(old) - s, new[p:len(new) - s])]
    ops = difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
    return [(i1, i2, new[j1:j2]) for tag, i1, i2, j1, j2 in reversed(ops) if tag != "equal"]
