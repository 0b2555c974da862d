"""rpm's version comparison (rpmvercmp), in pure Python."""

from __future__ import annotations

from collections.abc import Iterator


def _segments(text: str) -> Iterator[tuple[int, str]]:
    """Split a version into rpm's segments: (kind, text), kind 0 for '~', 1 alpha, 2 digits."""
    index = 0
    while index < len(text):
        char = text[index]
        if char == "~":
            yield 0, "~"
            index += 1
        elif char.isdigit():
            end = index
            while end < len(text) and text[end].isdigit():
                end += 1
            yield 2, text[index:end].lstrip("0") or "0"
            index = end
        elif char.isalpha():
            end = index
            while end < len(text) and text[end].isalpha():
                end += 1
            yield 1, text[index:end]
            index = end
        else:
            index += 1


def vercmp(left: str, right: str) -> int:
    """rpm's version comparison (rpmvercmp), enough for picking the newest kernel-devel."""
    a, b = list(_segments(left)), list(_segments(right))
    for (kind_a, seg_a), (kind_b, seg_b) in zip(a, b, strict=False):
        if kind_a != kind_b:
            # '~' sorts before anything; digits sort after letters.
            return -1 if kind_a < kind_b else 1
        if kind_a == 2 and len(seg_a) != len(seg_b):
            return -1 if len(seg_a) < len(seg_b) else 1
        if seg_a != seg_b:
            return -1 if seg_a < seg_b else 1
    if len(a) == len(b):
        return 0
    longer, sign = (a, 1) if len(a) > len(b) else (b, -1)
    # A trailing '~' segment makes the longer version older.
    return -sign if longer[min(len(a), len(b))][0] == 0 else sign
