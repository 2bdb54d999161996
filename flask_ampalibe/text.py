"""Splitting a long text into messages Messenger accepts.

Messenger refuses a text of 2000 characters or more; :func:`split_text` cuts it at paragraph
or word boundaries, never inside a user-perceived character (an emoji sequence, a flag, a
letter with combining marks).  :meth:`Messenger.send_text <flask_ampalibe.messenger.Messenger.send_text>`
uses it to send a long text as several messages.
"""
from __future__ import annotations

import unicodedata

from .ui import TEXT_LIMIT

__all__ = ["split_text"]


def _utf16_len(text: str) -> int:
    # Counted in UTF-16 code units, as JavaScript-based clients do: conservative for astral emoji.
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _is_extender(ch: str) -> bool:
    """True when ``ch`` continues the character before it (so no split may come before it)."""
    code = ord(ch)
    return (
        code == 0x200D  # zero width joiner
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0x1F3FB <= code <= 0x1F3FF  # skin tone modifiers
        or 0xE0020 <= code <= 0xE007F  # tag characters (flag sequences)
        or 0xE0100 <= code <= 0xE01EF
        or 0x0300 <= code <= 0x036F  # combining diacritics (fast path of the category test)
        or unicodedata.category(ch) in ("Mn", "Me", "Mc")
    )


def _is_regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _cluster_end(text: str, i: int) -> int:
    """Index just after the user-perceived character starting at ``i`` (an approximation of
    Unicode grapheme clusters good enough for emoji ZWJ sequences, flags and combining marks)."""
    n = len(text)
    if text[i] == "\r" and i + 1 < n and text[i + 1] == "\n":
        return i + 2
    j = i + 1
    if _is_regional(text[i]) and j < n and _is_regional(text[j]):
        j += 1
    while j < n and (_is_extender(text[j]) or text[j - 1] == "\u200d"):
        j += 1
    return j


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Split ``text`` into pieces each shorter than ``limit`` characters.

    Pieces end at a paragraph or word boundary; a word longer than the limit is cut, but never
    inside a character, an emoji sequence or a flag.  Length is counted in UTF-16 code units
    (an emoji outside the Basic Multilingual Plane counts twice), which is never less than what
    Messenger counts.  The whitespace at a split point is dropped.

    Example::

        >>> [len(p) for p in split_text("x" * 5000)]
        [1999, 1999, 1002]
    """
    budget = limit - 1
    if _utf16_len(text) <= budget:
        return [text]
    pieces: list[str] = []
    n, start = len(text), 0
    while start < n:
        end, used = start, 0
        while end < n:
            nxt = _cluster_end(text, end)
            width = _utf16_len(text[end:nxt])
            if used + width > budget:
                if end == start:  # one absurdly long cluster: cut it between code points
                    while end < n and used + _utf16_len(text[end]) <= budget:
                        used += _utf16_len(text[end])
                        end += 1
                break
            used += width
            end = nxt
        if end >= n:
            piece, start = text[start:], n
        else:
            cut = _soft_break(text, start, end)
            if cut is None:
                piece, start = text[start:end], end
            else:
                piece, start = text[start:cut], cut
                while start < n and text[start].isspace():
                    start += 1
        piece = piece.rstrip() if start < n else piece
        if piece.strip():
            pieces.append(piece)
    return pieces


def _soft_break(text: str, start: int, end: int) -> int | None:
    """Best split index in ``text[start:end]``: a line break in its second half, else the last
    whitespace; ``None`` when the window is one single word."""
    newline = text.rfind("\n", start + 1, end + 1)
    if newline >= start + (end - start) // 2:
        return newline
    if text[end].isspace():
        return end
    for i in range(end - 1, start, -1):
        if text[i].isspace():
            return i
    return None
