"""Character classes, line normalization and the Jaccard similarity the cleaning proofs use.

Pure functions over ``str``; nothing here imports datatrove, so the definitions can be read (and
tested) on their own.

Scripts are counted per code point:

- Thai letters: U+0E01-U+0E3A and U+0E40-U+0E4E (consonants, vowels, tone and other marks of the
  Unicode Thai block); the block's digits U+0E50-U+0E59 are digits, its other signs (baht U+0E3F,
  fongman U+0E4F, angkhankhu U+0E5A, khomut U+0E5B) symbols.
- Latin letters: A-Z, a-z and the letters of Latin-1 Supplement and Latin Extended-A/B
  (U+00C0-U+024F without the signs U+00D7 and U+00F7).
- other letters: any other code point ``str.isalpha`` accepts (\\w minus digits and ``_``).
- digits: any Unicode decimal digit (``\\d``: ASCII and Thai digits alike).
- whitespace: ``\\s``; symbols: everything else (punctuation, emoji, marks outside the Thai block).
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

_THAI = re.compile("[\u0e01-\u0e3a\u0e40-\u0e4e]")
_LATIN = re.compile("[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f]")
_OTHER_LETTER = re.compile("[^\\W\\d_A-Za-z\u00c0-\u024f\u0e00-\u0e7f]")
_DIGIT = re.compile(r"\d")
_SPACE = re.compile(r"\s")
_WS_RUN = re.compile(r"\s+")
_DIGIT_RUN = re.compile(r"\d+")


def _count(pattern: re.Pattern, text: str) -> int:
    return len(pattern.findall(text))


@dataclass(frozen=True)
class ScriptCounts:
    """Code points of ``text`` by class (see the module docstring); all counts are ints."""
    thai: int
    latin: int
    other_letters: int
    digits: int
    spaces: int
    symbols: int

    @classmethod
    def of(cls, text: str) -> "ScriptCounts":
        thai, latin = _count(_THAI, text), _count(_LATIN, text)
        other, digits, spaces = _count(_OTHER_LETTER, text), _count(_DIGIT, text), _count(_SPACE, text)
        return cls(thai, latin, other, digits, spaces, len(text) - thai - latin - other - digits - spaces)

    @property
    def letters(self) -> int:
        return self.thai + self.latin + self.other_letters

    @property
    def visible(self) -> int:
        """Code points that are not whitespace."""
        return self.letters + self.digits + self.symbols


def normalize_line(line: str) -> str:
    """The form in which lines are compared across documents (boilerplate counting and patterns):
    NFC, lower case, every run of digits replaced by one ``0`` (so ``© 2019`` and ``© 2021`` are
    the same line), whitespace runs collapsed to one space, stripped."""
    line = unicodedata.normalize("NFC", line).lower()
    return _WS_RUN.sub(" ", _DIGIT_RUN.sub("0", line)).strip()


def line_hash(normalized: str) -> int:
    """64-bit hash of a normalized line (BLAKE2b, 8-byte digest, little-endian), as an int in
    [0, 2**64)."""
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(), "little")


def collapse(text: str) -> str:
    """NFC with every whitespace run collapsed to one space and the ends stripped: the text on which
    the proofs measure similarity and on which exact duplicates are recognised."""
    return _WS_RUN.sub(" ", unicodedata.normalize("NFC", text)).strip()


def char_ngrams(text: str, n: int = 5) -> set[str]:
    """The set of character ``n``-grams of ``collapse(text)`` (a text shorter than ``n`` gives
    itself, so that two equal short texts still have Jaccard 1)."""
    t = collapse(text)
    if len(t) < n:
        return {t} if t else set()
    return {t[i:i + n] for i in range(len(t) - n + 1)}


def jaccard(a: str, b: str, n: int = 5) -> float:
    """Jaccard similarity |A ∩ B| / |A ∪ B| of the character ``n``-gram sets of two texts (the
    definition in issue 18's proof: 5-grams of the NFC text with whitespace collapsed); 1.0 for
    two empty texts."""
    sa, sb = char_ngrams(a, n), char_ngrams(b, n)
    union = len(sa | sb)
    return len(sa & sb) / union if union else 1.0
