"""Language routing by script and the Thai rules; datatrove's own filters do the rest.

A Thai+English crawl is routed per document, without a language-ID model, by the letters it is
written in (``text.ScriptCounts``): ``ScriptLanguageFilter`` sets ``metadata["language"]`` to
``"th"`` when Thai letters are at least ``th_min_share`` of all letters, else ``"en"`` when Latin
letters are at least ``en_min_share``, and removes the rest as ``no_majority_script``
(``metadata["language_score"]`` is that share, as datatrove's LanguageFilter names it).

``LanguageRoutedFilter`` applies any datatrove filter (``GopherRepetitionFilter``,
``FineWebQualityFilter``, ``GopherQualityFilter``) to the documents of one language only, so that
English prose is never judged by Thai stop words or Thai letter ratios and vice versa.

``ThaiQualityFilter`` adds what FineWeb-2's settings do not check: length in characters, the share
of Thai letters among visible characters, and digit and symbol ratios (thresholds in thai.yaml).
"""
from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from megatron_th.data.clean.records import RemovedWriter

from megatron_th.data.clean.text import ScriptCounts


class ScriptLanguageFilter(BaseFilter):
    """Routes by script (see the module docstring); removes ``no_majority_script`` (also a
    document without letters).

    Args:
        th_min_share: Thai letters / all letters at or above which the Thai rules apply.
        en_min_share: Latin letters / all letters at or above which the English rules apply
            (checked after Thai).
    """

    name = "🔤 script language"

    def __init__(self, th_min_share: float = 0.5, en_min_share: float = 0.5,
                 exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        RemovedWriter.attach(exclusion_writer, self)
        self.th_min_share, self.en_min_share = th_min_share, en_min_share

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        c = ScriptCounts.of(doc.text)
        if c.letters:
            for lang, share, least in (("th", c.thai / c.letters, self.th_min_share),
                                       ("en", c.latin / c.letters, self.en_min_share)):
                if share >= least:
                    doc.metadata["language"], doc.metadata["language_score"] = lang, round(share, 4)
                    self.stat_update(f"language={lang}")
                    return True
        return False, "no_majority_script"


class LanguageRoutedFilter(BaseFilter):
    """``inner.filter`` for documents whose ``metadata["language"]`` is ``language``; every other
    document passes. The reason is the inner filter's (``gopher_short_doc``, ``top_2_gram``...)."""

    def __init__(self, inner: BaseFilter, language: str, exclusion_writer: DiskWriter | None = None):
        self.name = f"{inner.name} [{language}]"  # before the base class names the stats after it
        super().__init__(exclusion_writer)
        RemovedWriter.attach(exclusion_writer, self)
        self.inner, self.language = inner, language

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata.get("language") != self.language:
            return True
        return self.inner.filter(doc)


class ThaiQualityFilter(BaseFilter):
    """Character-level rules for Thai documents (language ``"th"``; others pass). Ratios are over
    visible (non-whitespace) characters. Reasons: ``too_short``, ``too_long``,
    ``thai_ratio``, ``digit_ratio``, ``symbol_ratio``. A threshold of None disables its rule.

    Args:
        min_chars / max_chars: length of the text in characters (code points).
        min_thai_ratio: Thai letters / visible characters.
        max_digit_ratio: digits (ASCII or Thai) / visible characters.
        max_symbol_ratio: punctuation, signs and emoji / visible characters.
    """

    name = "🇹🇭 Thai quality"

    def __init__(self, min_chars: int | None = 200, max_chars: int | None = 500_000,
                 min_thai_ratio: float | None = 0.4, max_digit_ratio: float | None = 0.2,
                 max_symbol_ratio: float | None = 0.2, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        RemovedWriter.attach(exclusion_writer, self)
        self.min_chars, self.max_chars = min_chars, max_chars
        self.min_thai_ratio = min_thai_ratio
        self.max_digit_ratio, self.max_symbol_ratio = max_digit_ratio, max_symbol_ratio

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata.get("language") != "th":
            return True
        n = len(doc.text)
        if self.min_chars is not None and n < self.min_chars:
            return False, "too_short"
        if self.max_chars is not None and n > self.max_chars:
            return False, "too_long"
        c = ScriptCounts.of(doc.text)
        visible = max(c.visible, 1)
        if self.min_thai_ratio is not None and c.thai / visible < self.min_thai_ratio:
            return False, "thai_ratio"
        if self.max_digit_ratio is not None and c.digits / visible > self.max_digit_ratio:
            return False, "digit_ratio"
        if self.max_symbol_ratio is not None and c.symbols / visible > self.max_symbol_ratio:
            return False, "symbol_ratio"
        return True
