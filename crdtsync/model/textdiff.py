"""Character diffs for text fields: a write of a whole new text becomes small edits, so concurrent edits
elsewhere in the text survive the merge. No I/O.

The cost is bounded: the common prefix and suffix are cut first; what is left is diffed line by line; a
block of changed lines short enough (``_CHAR_LIMIT``) is diffed character by character, a longer one word
by word (then by character within short changed spans), and only a block too long even for that is
replaced whole. ``difflib`` at character level over a whole text took time growing with the cube of its
length on repetitive texts (a 4 KB table-like note: 26 s for one ``update()``, measured); replacing a long
changed line whole garbled a concurrent edit inside the same paragraph.

The edits found are then made semantic (``_semantic``, after diff-match-patch's ``cleanupSemantic``): a
stretch of old text kept between two edits is dropped (deleted and written again) when it is no longer than
either of them, and one kept at the start or end of the text when it is no longer than the deletion and
the insertion beside it. A rewrite then becomes one edit instead of many that keep scattered letters of the
old text ("Call back" -> "Customer declined" kept the "C", an "a", an "l"...): merged with a concurrent
rewrite, which deletes those letters, it read "ustomer declined, close deMeetingooedfr...", text neither
user wrote. A real edit (a word fixed in a sentence) keeps the longer text around it, so concurrent edits
of different words still merge character by character.
"""

from __future__ import annotations

import difflib
import re

__all__ = ["merge3", "text_edits"]

_DIFF_LIMIT = 20_000  # changed characters (old + new) above which the changed region is replaced whole
_CHAR_LIMIT = 500  # a block of changed lines up to this many characters (old + new) is diffed by character
_TOKEN_LIMIT = 4_000  # a longer block up to this many words and separators (old + new) is diffed by word
_TOKENS = re.compile(r"\w+|\s+|[^\w\s]")


def text_edits(old: str, new: str) -> list[tuple[int, int, str]]:
    """Edits ``(start, end, insert)`` turning ``old`` into ``new``, last first so indices stay valid.

    Small edits keep concurrent edits elsewhere in the text intact when merged.
    """
    if old == new:
        return []
    o, w, p = _trim(old, new, 0)
    if not o or not w or len(o) + len(w) > _DIFF_LIMIT:
        return [(p, p + len(o), w)]
    edits = _block(o, w, p) if len(o) + len(w) <= _CHAR_LIMIT else _by_lines(o, w, p)
    return _semantic(old, edits)[::-1]


def _semantic(old: str, edits: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """``edits`` (of ``old``, first first) with the stretches of old text kept between them that do not
    outweigh them dropped: merged into one edit that deletes and writes them again (see the module
    docstring). One pass with a stack, as ``cleanupSemantic``'s: a merged edit is larger, so the stretch
    before it is weighed again. Then the stretches at either end of the text, which have no edit on their
    other side, are weighed against both the deletion and the insertion beside them (a pure insertion
    keeps the text it is inserted into: appending a line stays an insertion), and the pass runs again if
    that merged something."""
    # an edit on the stack: start, end, the parts of its insert and their length; ``gaps[i]``: the length
    # of the old text kept before stack[i]
    stack: list[tuple[int, int, list[str], int]] = []
    gaps: list[int] = []
    for s, e, ins in edits:
        cur = (s, e, [ins], len(ins))
        gap = s - (stack[-1][1] if stack else 0)
        while stack and gap <= max(e - s, cur[3]) and gap <= max(stack[-1][1] - stack[-1][0], stack[-1][3]):
            ps, pe, parts, n = stack.pop()
            kept = old[pe:s]
            parts.append(kept)
            parts.extend(cur[2])
            cur = (ps, e, parts, n + len(kept) + cur[3])
            s = ps
            gap = gaps.pop()
        stack.append(cur)
        gaps.append(gap)
    merged = False
    if stack:
        s, e, parts, n = stack[0]
        if 0 < s <= min(e - s, n):
            stack[0] = (0, e, [old[:s], *parts], n + s)
            merged = True
        s, e, parts, n = stack[-1]
        if 0 < len(old) - e <= min(e - s, n):
            stack[-1] = (s, len(old), [*parts, old[e:]], n + len(old) - e)
            merged = True
    out = [(s, e, "".join(parts)) for s, e, parts, _ in stack]
    return _semantic(old, out) if merged and len(out) > 1 else out


def merge3(base: str, mine: str, current: str) -> str:
    """``mine`` (edited from ``base``) applied onto ``current`` (what ``base`` became meanwhile elsewhere).

    The edits turning ``base`` into ``mine`` are replayed on ``current``, their places mapped through the
    edits turning ``base`` into ``current``, as a text CRDT would merge them: a character of ``base`` this
    edit deletes goes if it is still there; characters the other side inserted stay, even inside a range this
    edit replaced; this edit's insert goes where the first character it replaced is now (or, if that is gone,
    before the next character of ``base`` still there). Neither side's characters are dropped: where both
    replaced the same words, both replacements show, one after the other.
    """
    if mine == base:
        return current
    if current == base:
        return mine
    # where each character of ``base`` is in ``current`` (-1: deleted there)
    where = [-1] * len(base)
    b = c = 0
    for start, end, insert in reversed(text_edits(base, current)):
        while b < start:
            where[b] = c
            b += 1
            c += 1
        b = end
        c += len(insert)
    while b < len(base):
        where[b] = c
        b += 1
        c += 1
    after = [len(current)] * (len(base) + 1)  # where the first character of ``base[k:]`` still there is
    for k in range(len(base) - 1, -1, -1):
        after[k] = where[k] if where[k] >= 0 else after[k + 1]
    out = list(current)
    for start, end, insert in text_edits(base, mine):  # last first: the places of earlier ones hold
        at = after[start]
        for k in range(min(end, len(base)) - 1, start - 1, -1):
            if where[k] >= 0:
                del out[where[k]]
        out[at:at] = insert
    return "".join(out)


def _trim(o: str, w: str, at: int) -> tuple[str, str, int]:
    """``o`` and ``w`` (at offset ``at``) without their common prefix and suffix, and where what is left
    starts."""
    n = min(len(o), len(w))
    p = 0
    while p < n and o[p] == w[p]:
        p += 1
    s = 0
    while s < n - p and o[-1 - s] == w[-1 - s]:
        s += 1
    return o[p:len(o) - s], w[p:len(w) - s], at + p


def _fine(o: str, w: str, at: int) -> list[tuple[int, int, str]]:
    """Edits turning one changed region ``o`` into ``w``, as fine as the cost bound allows, first first."""
    o, w, at = _trim(o, w, at)
    if not o or not w or len(o) + len(w) <= _CHAR_LIMIT:
        return _block(o, w, at) if o and w else [(at, at + len(o), w)]
    to, tw = _TOKENS.findall(o), _TOKENS.findall(w)
    if len(to) + len(tw) > _TOKEN_LIMIT:
        return [(at, at + len(o), w)]
    so, sw = _starts(to), _starts(tw)
    out: list[tuple[int, int, str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, to, tw, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        a, b, c, d = so[i1], so[i2], sw[j1], sw[j2]
        if a < b and c < d and (b - a) + (d - c) <= _CHAR_LIMIT:
            out += _block(o[a:b], w[c:d], at + a)
        else:
            out.append((at + a, at + b, w[c:d]))
    return out


def _block(o: str, w: str, at: int) -> list[tuple[int, int, str]]:
    """Character edits turning ``o`` (at offset ``at`` of the old text) into ``w``, first first."""
    ops = difflib.SequenceMatcher(None, o, w, autojunk=False).get_opcodes()
    return [(at + i1, at + i2, w[j1:j2]) for tag, i1, i2, j1, j2 in ops if tag != "equal"]


def _by_lines(o: str, w: str, at: int) -> list[tuple[int, int, str]]:
    """Edits turning ``o`` into ``w`` line by line, each changed block by character when short, first first."""
    lo, lw = o.splitlines(keepends=True), w.splitlines(keepends=True)
    starts_o = _starts(lo)
    starts_w = _starts(lw)
    out: list[tuple[int, int, str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, lo, lw, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        a, b = starts_o[i1], starts_o[i2]
        c, d = starts_w[j1], starts_w[j2]
        if (b - a) + (d - c) <= _CHAR_LIMIT and a < b and c < d:
            out += _block(o[a:b], w[c:d], at + a)
        elif tag == "replace" and i2 - i1 == j2 - j1:  # as many lines changed as written: line by line
            for k in range(i2 - i1):
                a, b = starts_o[i1 + k], starts_o[i1 + k + 1]
                c, d = starts_w[j1 + k], starts_w[j1 + k + 1]
                out += _fine(o[a:b], w[c:d], at + a)
        elif a < b and c < d:
            out += _fine(o[a:b], w[c:d], at + a)
        else:
            out.append((at + a, at + b, w[c:d]))
    return out


def _starts(lines: list[str]) -> list[int]:
    """Offsets of each line's start, and of the end."""
    out = [0]
    for line in lines:
        out.append(out[-1] + len(line))
    return out
