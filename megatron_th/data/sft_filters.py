"""Conversation filters for SFT preprocessing: response length in words, overlong truncation.

Words (``count_words``): a maximal run of non-space characters outside the Thai block is one
word (whitespace words, right for English and other space-separated scripts). Thai writes no
spaces between words, and a dictionary segmenter (pythainlp) is not a dependency, so a maximal
run of Thai script (U+0E00-U+0E7F) counts ``ceil(n / THAI_CHARS_PER_WORD)`` words, where ``n``
is its characters that take their own column (tone marks and above/below vowels, Unicode
category Mn, are not counted). 3.5 is the mean of 12 hand-segmented sentences (228 such
characters, 66 words; tests/test_preprocess_sft.py checks the estimate against them): a pruning
threshold, not a linguistic count. Use ``--min-response-tokens`` for an exact measure.
"""
from __future__ import annotations

import math
import re
import unicodedata

THAI_CHARS_PER_WORD = 3.5
_RUN = re.compile(r"[\u0e00-\u0e7f]+|[^\s\u0e00-\u0e7f]+")


def count_words(text: str) -> int:
    """Approximate word count of ``text`` (see the module docstring)."""
    words = 0
    for m in _RUN.finditer(text):
        run = m.group()
        if "\u0e00" <= run[0] <= "\u0e7f":
            n = sum(1 for ch in run if unicodedata.category(ch) != "Mn")
            words += max(1, math.ceil(n / THAI_CHARS_PER_WORD))
        else:
            words += 1
    return words


def assistant_runs(mask: list[int]) -> list[tuple[int, int]]:
    """``[start, end)`` of each maximal run of 1s in ``mask`` (the assistant turns' tokens)."""
    runs, start = [], None
    for i, m in enumerate(mask):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(mask)))
    return runs


def truncate(ids: list[int], mask: list[int], max_len: int, end_of_turn: list[int],
             end_of_turn_mask: list[int]) -> tuple[list[int], list[int]] | None:
    """Cut an overlong conversation (``len(ids) > max_len``) to at most ``max_len`` tokens.

    The last assistant turn that starts before ``max_len`` is cut: the conversation ends after it
    when the whole turn fits; otherwise its content is cut so that the template's end-of-turn
    tokens (``end_of_turn``, with ``end_of_turn_mask``; see ChatEncoder) still fit after it, and
    the turn keeps at least one token of its own; when it cannot, the conversation ends after the
    previous assistant turn. Later turns are dropped. ``mask`` is the assistant mask (1 = assistant
    token). Returns ``(ids, mask)``, or None when no assistant token would remain."""
    runs = [r for r in assistant_runs(mask) if r[0] < max_len]
    if not runs:
        return None
    start, end = runs[-1]
    if end <= max_len:
        return ids[:end], mask[:end]
    cut = max_len - len(end_of_turn)
    if cut > start:
        return ids[:cut] + list(end_of_turn), mask[:cut] + list(end_of_turn_mask)
    if len(runs) > 1:
        end = runs[-2][1]
        return ids[:end], mask[:end]
    return None
