"""Word tokenizers handed to datatrove's filters and MinHash stage in place of its defaults.

datatrove picks a word tokenizer by language code (``datatrove.utils.word_tokenizers
.load_word_tokenizer``): English is spaCy's, which the ``[data]`` extra does not install, and Thai
is PyThaiNLP whose sentence splitter (``crfcut``) needs python-crfsuite. Every filter and
``MinhashDedupSignature`` also accept a ``WordTokenizer`` instance as ``language``; these are the
ones megatron_th passes. None of them downloads anything:

- ``ThaiWordTokenizer``: PyThaiNLP ``newmm-safe`` (maximal matching over the dictionary that ships
  inside the pythainlp wheel, ``pythainlp/corpus/words_th.txt``; "safe" bounds the search on long
  unbreakable runs). Latin words, digits and punctuation in Thai text come out as their own
  tokens. Before pythainlp is imported, ``PYTHAINLP_READ_ONLY=1`` (do not create
  ``~/pythainlp-data``) and ``PYTHAINLP_OFFLINE=1`` (never fetch a corpus) are set unless the user
  set them.
- ``LatinWordTokenizer``: a regular expression standing in for spaCy's English tokenizer: numbers
  with inner separators (``1,000``, ``3.5``, ``10:30``), runs of word characters and combining
  marks (apostrophes inside a word kept), and each other non-space character on its own.
- ``CharTokenizer``: one token per character (NFC), spaces included, so that MinHash's n-grams of
  "words" are character n-grams (the shingles used for Thai near-duplicates).

Sentences (only used by datatrove's sentence-level steps, none of which the cleaning pipeline
runs) are split at newlines and after terminal punctuation followed by a space.
"""
from __future__ import annotations

import os
import re
import unicodedata

from datatrove.utils.word_tokenizers import WordTokenizer, simple_span_tokenize

os.environ.setdefault("PYTHAINLP_READ_ONLY", "1")
os.environ.setdefault("PYTHAINLP_OFFLINE", "1")

_SENTENCE = re.compile(r"[^\n]+?(?:[.!?。…](?=\s)|(?=\n)|$)")
_MARKS = "\u0300-\u036f\u0e31\u0e34-\u0e3a\u0e47-\u0e4e"  # combining marks: Latin accents, Thai vowels and tones
_LATIN_WORD = re.compile(rf"\d+(?:[.,:]\d+)+|[\w{_MARKS}]+(?:['’][\w{_MARKS}]+)*|[^\w\s{_MARKS}]")
_WS_RUN = re.compile(r"\s+")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


class _Tokenizer(WordTokenizer):
    def sent_tokenize(self, text: str) -> list[str]:
        return _sentences(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return list(simple_span_tokenize(text, self.sent_tokenize(text)))

    def __eq__(self, other):  # equal tokenizers share datatrove's split_into_words cache entries
        return type(other) is type(self)

    def __hash__(self):
        return hash(type(self).__name__)

    def __repr__(self):
        return type(self).__name__ + "()"


class ThaiWordTokenizer(_Tokenizer):
    """PyThaiNLP ``newmm-safe`` words, whitespace dropped (``keep_whitespace=False``)."""

    def __init__(self):
        super().__init__("th")

    def word_tokenize(self, text: str) -> list[str]:
        from pythainlp.tokenize import word_tokenize

        return [w for w in (t.strip() for t in word_tokenize(text, engine="newmm-safe", keep_whitespace=False)) if w]


class LatinWordTokenizer(_Tokenizer):
    """Words for space-separated scripts (see the module docstring)."""

    def __init__(self):
        super().__init__("en")

    def word_tokenize(self, text: str) -> list[str]:
        return _LATIN_WORD.findall(text)


class CharTokenizer(_Tokenizer):
    """Characters of the NFC text with whitespace runs collapsed to one space (kept as a token)."""

    def __init__(self):
        super().__init__("char")

    def word_tokenize(self, text: str) -> list[str]:
        return list(_WS_RUN.sub(" ", unicodedata.normalize("NFC", text)).strip())
