"""Boilerplate lines: counted over the whole corpus first, then removed line by line.

Web pages repeat the same short lines on every page of a site: footers ("Copyright © 2019 ...
สงวนลิขสิทธิ์"), navigation ("หน้าแรก | ข่าว | ติดต่อเรา"), share and cookie lines, "Posted by admin
in Uncategorized". Two passes find them:

1. ``BoilerplateLineCounter`` (every task): for each document, the set of its lines in normalized
   form (``text.normalize_line``: NFC, lower case, digit runs -> ``0``, whitespace collapsed) that
   are at most ``max_line_chars`` long, hashed to 64 bits, each paired with the document's *body
   key*: the smallest hash of its longer lines (of its whole text when it has none). Copies of one
   article share most paragraphs, hence usually their body key, and count once; pages of a site
   have different bodies and count one by one. The distinct (line, body key) pairs of the task are
   written in ``partitions`` files by ``line hash % partitions``.
2. ``BoilerplateLineMerge`` (task p of ``partitions``): the distinct pairs of partition p over all
   tasks; keeps the line hashes found with at least ``min_docs`` body keys.
3. ``BoilerplateLinesFilter`` (every task, before the quality filters and dedup): removes each line
   whose normalized form is a kept hash, or matches one of ``patterns`` (regular expressions
   searched in the normalized line, for boilerplate that varies from page to page: "posted by
   <name>", cookie notices, "Home » News » ..." menus), again only lines up to ``max_line_chars``.
   A document is kept when at least ``min_letters_left`` letters remain, else removed as
   ``boilerplate/no_text_left``.

Long lines are never boilerplate, and copies count once: an article copied across many sites
repeats its paragraphs and its title, and it is near-duplicate removal, not line removal, that must
keep one copy of it, title included.
Counted over the corpus, the result does not depend on the number of tasks.
"""
from __future__ import annotations

import glob
import os
import re
from array import array

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from megatron_th.data.clean.records import RemovedWriter

from megatron_th.data.clean.text import ScriptCounts, line_hash, normalize_line


def _save(path: str, arr: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.npy"
    np.save(tmp, arr)
    os.replace(tmp, path)


def document_lines(text: str, max_line_chars: int) -> tuple[set[int], int]:
    """(hashes of the distinct normalized lines of ``text`` that are 1..``max_line_chars`` long,
    the document's body key: the smallest hash of its longer lines, or of the whole normalized
    text when no line is longer)."""
    short, body = set(), None
    for line in text.split("\n"):
        norm = normalize_line(line)
        if not norm:
            continue
        h = line_hash(norm)
        if len(norm) <= max_line_chars:
            short.add(h)
        elif body is None or h < body:
            body = h
    return short, (line_hash(normalize_line(text)) if body is None else body)


class BoilerplateLineCounter(PipelineStep):
    """Pass 1: the task's distinct (short line hash, body key) pairs, written as
    ``output_folder/{p:05d}/{rank:05d}.npy`` (uint64 array ``[n, 2]``) for each partition
    p = line hash % ``partitions``. Consumes its input (a terminal step)."""

    type = "🔢 - STATS"
    name = "🧾 boilerplate line counter"

    def __init__(self, output_folder: str, partitions: int, max_line_chars: int = 200):
        super().__init__()
        self.output_folder, self.partitions, self.max_line_chars = output_folder, partitions, max_line_chars

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        seen = array("Q")
        for doc in data or ():
            self.stat_update("documents")
            with self.track_time():
                short, body = document_lines(doc.text, self.max_line_chars)
                for h in short:
                    seen.extend((h, body))
        table = np.unique(np.frombuffer(seen, dtype=np.uint64).reshape(-1, 2), axis=0)
        part = table[:, 0] % np.uint64(self.partitions)
        for p in range(self.partitions):
            _save(os.path.join(self.output_folder, f"{p:05d}", f"{rank:05d}.npy"), table[part == p])
        self.stat_update("line_pairs", value=len(table))


class BoilerplateLineMerge(PipelineStep):
    """Pass 2, task p of ``partitions``: the line hashes of partition p found with at least
    ``min_docs`` distinct body keys over the corpus, sorted, as ``output_folder/{p:05d}.npy``
    (uint64)."""

    type = "🔢 - STATS"
    name = "🧾 boilerplate line merge"

    def __init__(self, counts_folder: str, output_folder: str, min_docs: int):
        super().__init__()
        self.counts_folder, self.output_folder, self.min_docs = counts_folder, output_folder, min_docs

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        files = sorted(glob.glob(os.path.join(self.counts_folder, f"{rank:05d}", "*.npy")))
        tables = [np.load(f) for f in files]
        table = np.concatenate(tables) if tables else np.zeros((0, 2), np.uint64)
        keep = np.zeros(0, np.uint64)
        if len(table):
            lines, counts = np.unique(np.unique(table, axis=0)[:, 0], return_counts=True)
            keep = lines[counts >= self.min_docs]
        _save(os.path.join(self.output_folder, f"{rank:05d}.npy"), keep)
        self.stat_update("boilerplate_lines", value=len(keep))


class BoilerplateLinesFilter(BaseFilter):
    """Pass 3: removes boilerplate lines in place (``doc.text``; the input text is kept in
    ``metadata["original_text"]``) and drops documents left without text (``no_text_left``).
    Counts removed lines as ``boilerplate_lines=repeated`` / ``boilerplate_lines=pattern``.

    Args:
        lines_folder: where ``BoilerplateLineMerge`` wrote the repeated lines (all files are read).
        patterns: regular expressions searched in normalized lines (case is already folded).
        max_line_chars: longer (normalized) lines are never removed.
        min_letters_left: letters the remaining text needs for the document to be kept.
    """

    name = "🧾 boilerplate lines"

    def __init__(self, lines_folder: str | None, patterns: list[str], max_line_chars: int = 200,
                 min_letters_left: int = 1, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        RemovedWriter.attach(exclusion_writer, self)
        self.lines_folder, self.max_line_chars, self.min_letters_left = lines_folder, max_line_chars, min_letters_left
        self.patterns = [re.compile(p) for p in patterns]
        self._repeated: set[int] | None = None

    @property
    def repeated(self) -> set[int]:
        if self._repeated is None:
            files = sorted(glob.glob(os.path.join(self.lines_folder, "*.npy"))) if self.lines_folder else []
            self._repeated = {int(h) for f in files for h in np.load(f)}
        return self._repeated

    def line_kind(self, line: str) -> str | None:
        """``"repeated"``, ``"pattern"`` or None (not boilerplate) for one line."""
        norm = normalize_line(line)
        if not norm or len(norm) > self.max_line_chars:
            return None
        if line_hash(norm) in self.repeated:
            return "repeated"
        if any(p.search(norm) for p in self.patterns):
            return "pattern"
        return None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        kept, removed = [], 0
        for line in doc.text.split("\n"):
            kind = self.line_kind(line)
            if kind is None:
                kept.append(line)
            else:
                removed += 1
                self.stat_update(f"boilerplate_lines={kind}")
        if removed:
            doc.metadata.setdefault("original_text", doc.text)
            doc.text = "\n".join(kept).strip("\n")
        if ScriptCounts.of(doc.text).letters < self.min_letters_left:
            return False, "no_text_left"
        return True
