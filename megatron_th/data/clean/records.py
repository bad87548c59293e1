"""Reading input records into datatrove Documents, and writing them back out as records.

The input is read by ``megatron_th.data.readers`` -- the reader of ``tools/preprocess_data.py`` --
so jsonl, jsonl.gz (UTF-8/16/32, BOMs, CRLF) and parquet behave exactly as in preprocessing. A
record that cannot be read, or whose text is missing, not a string, holds a lone surrogate or is
blank, is removed with ``removed_by = "read/<reason>"`` (the reasons of ``readers.REASONS`` and
``empty_text``) and written to the removed files as ``{"source", "removed_by", "detail"}``.

A Document carries through the pipeline:
- ``text``: the text as cleaned so far; ``id``: ``"path:line"`` (where the record came from);
- ``metadata["record"]``: the record's other fields, unchanged, in their order (the text field
  kept in place with value ``None``); ``metadata["order"]``: ``[file index in the sorted input
  list, line]``, the input order in which duplicates keep their first copy;
- ``metadata["original_text"]``: the input text, once a step has changed ``text``.

Task ``rank`` of ``world_size`` reads a contiguous run of the sorted input files (``shard_files``),
so concatenating the tasks' outputs in rank order gives the input order for any task count.

Writers (datatrove ``DiskWriter`` subclasses; stdlib ``json``, not orjson, which the ``[data]``
extra does not install): ``IntermediateWriter`` (whole Documents between stages, read back by
``IntermediateReader``), ``KeptWriter`` (the record with its cleaned text) and ``RemovedWriter``
(the record as it was read, plus ``removed_by = "stage/reason"`` and, for duplicates,
``duplicate_of = "path:line"`` of the copy kept). Every writer counts what it writes in datatrove's
task stats (``kept_docs``, ``removed_by=<stage/reason>``), which ``finalize`` adds up.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import time

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers.base import BaseReader
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.logging import logger

from megatron_th.data import readers

EMPTY = "empty_text"
_SURROGATE = re.compile("[\ud800-\udfff]")
PROGRESS_EVERY = 2.0  # seconds between two writes of a task's progress file


def shard_files(sizes: list[int], rank: int, world_size: int) -> list[int]:
    """Indices of the files task ``rank`` reads: file i (starting at byte ``s_i`` of the
    concatenated input of ``total`` bytes) goes to task ``min(world_size - 1, s_i * world_size //
    total)``. Contiguous and in order, about ``total / world_size`` bytes per task, whole files only
    (a file is never split, as in datatrove's own readers). Empty inputs are spread by count."""
    total, start, out = sum(sizes), 0, []
    for i, size in enumerate(sizes):
        owner = min(world_size - 1, start * world_size // total) if total else i * world_size // len(sizes)
        if owner == rank:
            out.append(i)
        start += size
    return out


class ProgressFile:
    """Writes ``done`` (bytes) to ``folder/{rank:05d}`` at most every PROGRESS_EVERY seconds and at
    close, atomically; the driver sums these files into a progress bar. ``folder=None``: no-op."""

    def __init__(self, folder: str | None, rank: int):
        self.path = os.path.join(folder, f"{rank:05d}") if folder else None
        self.last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.path is None or (not force and now - self.last < PROGRESS_EVERY):
            return
        self.last = now
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            f.write(str(done))
        os.replace(tmp, self.path)


def _text_problem(obj: dict, key: str):
    """(reason, detail) when ``obj[key]`` cannot be cleaned, else None (checks of readers._check)."""
    if key not in obj:
        return readers.MISSING_KEY, key
    text = obj[key]
    if not isinstance(text, str):
        return readers.NOT_STRING, f"{key} is {type(text).__name__}"
    if (m := _SURROGATE.search(text)) is not None:
        return readers.LONE_SURROGATE, f"{key}: U+{ord(m.group()):04X} at character {m.start()}"
    if not text.strip():
        return EMPTY, ""
    return None


class RecordReader(BaseReader):
    """Input records of ``paths`` (sorted, as given) as Documents; see the module docstring.

    Args:
        paths: the input files in input order (``sorted``, no duplicates).
        text_key: the field holding the text.
        exclusion_writer: a ``RemovedWriter`` for unreadable records (None: counted only).
        progress_dir: where to write this task's progress (bytes read), or None.
        show_errors: how many unreadable records each task logs as ``file:line: reason``.
    """

    name = "📖 megatron_th records"

    def __init__(self, paths: list[str], text_key: str = "text", exclusion_writer: DiskWriter | None = None,
                 progress_dir: str | None = None, show_errors: int = 5):
        super().__init__(text_key=text_key)
        self.paths = list(paths)
        self.exclusion_writer = exclusion_writer
        RemovedWriter.attach(exclusion_writer, self)
        self.progress_dir = progress_dir
        self.show_errors = show_errors

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        sizes = [os.path.getsize(p) for p in self.paths]
        mine = shard_files(sizes, rank, world_size)
        index = {self.paths[i]: i for i in mine}
        start, offset = {}, 0
        for i in mine:
            start[self.paths[i]] = offset
            offset += sizes[i]
        progress, shown = ProgressFile(self.progress_dir, rank), 0
        writer = self.exclusion_writer
        try:
            for rec in readers.iter_records([self.paths[i] for i in mine], keys=None):
                progress.update(start[rec.path] + rec.pos)
                if rec.blank:
                    continue
                self.stat_update("input_docs")
                problem = (rec.error, rec.detail) if rec.error else _text_problem(rec.obj, self.text_key)
                if problem:
                    if shown < self.show_errors:
                        logger.warning(f"{rec.where}: {problem[0].replace('_', ' ')}"
                                       + (f" ({problem[1]})" if problem[1] else "") + "; removed")
                        shown += 1
                    if writer is not None:
                        writer.write(Document(text="", id=rec.where, metadata={
                            "removed_by": f"read/{problem[0]}", "detail": problem[1]}), rank)
                    continue
                obj = rec.obj
                text = obj[self.text_key]
                obj[self.text_key] = None
                self.stat_update("doc_len", value=len(text))
                yield Document(text=text, id=rec.where,
                               metadata={"record": obj, "order": [index[rec.path], rec.line]})
        finally:
            progress.update(offset, force=True)
            if writer is not None:
                writer.close()


class IntermediateReader(PipelineStep):
    """The Documents an ``IntermediateWriter`` wrote for this task: ``folder/{rank:05d}.jsonl.gz``
    (none when that task kept nothing), in the order written."""

    type = "📖 - READER"
    name = "📖 megatron_th documents"

    def __init__(self, folder: str, progress_dir: str | None = None):
        super().__init__()
        self.folder = folder
        self.progress_dir = progress_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        path = os.path.join(self.folder, f"{rank:05d}.jsonl.gz")
        if not os.path.exists(path):
            return
        progress = ProgressFile(self.progress_dir, rank)
        with open(path, "rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                progress.update(raw.tell())
                self.stat_update("documents")
                yield Document(text=d["text"], id=d["id"], metadata=d["metadata"])
        progress.update(os.path.getsize(path), force=True)


def _dumps(obj) -> bytes:
    try:
        return (json.dumps(obj, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in some other field: keep it escaped, as read
        return (json.dumps(obj, ensure_ascii=True, default=str) + "\n").encode("ascii")


class _JsonWriter(DiskWriter):
    """``folder/{rank:05d}.jsonl.gz``, one JSON object per line (stdlib json, UTF-8)."""

    name = "🐿 megatron_th jsonl"

    def __init__(self, output_folder: str, text_key: str = "text"):
        super().__init__(output_folder, output_filename="${rank}.jsonl.gz", compression="gzip", mode="wb")
        self.text_key = text_key

    def _write(self, document: dict, file_handler, _filename: str):
        file_handler.write(_dumps(document))

    def _record(self, doc: Document, text: str) -> dict:
        rec = dict(doc.metadata.get("record") or {})
        rec[self.text_key] = text
        return rec


class IntermediateWriter(_JsonWriter):
    """Whole Documents (text, id, metadata) for the next stage's ``IntermediateReader``."""

    def _default_adapter(self, doc: Document) -> dict:
        return {"text": doc.text, "id": doc.id, "metadata": doc.metadata}


class KeptWriter(_JsonWriter):
    """The record with every input field, its text field holding the cleaned text."""

    def _default_adapter(self, doc: Document) -> dict:
        return self._record(doc, doc.text)

    def write(self, document: Document, rank: int = 0, **kwargs):
        super().write(document, rank, **kwargs)
        self.stat_update("kept_docs")


class RemovedWriter(_JsonWriter):
    """The record as read (original text) plus ``removed_by``: ``metadata["removed_by"]`` when a
    step set it, else ``"{stage}/{filter_reason}"`` (datatrove's filters set ``filter_reason``).
    Unreadable records (no ``record``) are written as ``{"source", "removed_by", "detail"}``."""

    def __init__(self, output_folder: str, stage: str, text_key: str = "text"):
        super().__init__(output_folder, text_key)
        self.stage = stage
        self.step_stats = None

    @staticmethod
    def attach(writer: DiskWriter | None, step: PipelineStep) -> None:
        """Counts ``removed_by=...`` in the stats of ``step`` (a pipeline step: datatrove saves
        those per task, not an exclusion writer's)."""
        if isinstance(writer, RemovedWriter):
            writer.step_stats = step.stats

    def _default_adapter(self, doc: Document) -> dict:
        md = doc.metadata
        if "record" not in md:
            return {"source": doc.id, "removed_by": md["removed_by"], "detail": md.get("detail", "")}
        rec = self._record(doc, md.get("original_text", doc.text))
        rec["removed_by"] = md["removed_by"]
        if "duplicate_of" in md:
            rec["duplicate_of"] = md["duplicate_of"]
        return rec

    def write(self, document: Document, rank: int = 0, **kwargs):
        md = document.metadata
        md.setdefault("removed_by", f"{self.stage}/{md.get('filter_reason') or 'filtered'}")
        super().write(document, rank, **kwargs)
        (self.step_stats or self.stats)[f"removed_by={md['removed_by']}"].update(1)
