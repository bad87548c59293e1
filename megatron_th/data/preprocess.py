"""jsonl / jsonl.gz / parquet -> Megatron ``{prefix}_{key}_document.bin/.idx`` (``megatron-th-preprocess``,
tools/preprocess_data.py).

Documents keep their input order whatever ``--workers``; each document's tokens are exactly the
tokenizer's ids for its text (nothing prepended), followed by EOD with ``--append-eod``. Bad
records (unreadable bytes or JSON, missing or non-string keys, lone surrogates, text the tokenizer
raises on, text blank after the tokenizer's normalization) are counted by reason, the first few
reported as ``file:line``, and skipped (``--strict`` makes the first one the error); none aborts
the run. With several ``--json-keys`` a record is skipped only when no key has text, otherwise every
key gets a document (empty, or EOD-only, for a bad or empty value), so the datasets stay aligned.
A run that writes no document is an error naming the keys the records had. Outputs appear under
their final names only when everything succeeded. The table in docs/data.md lists each case.

Where the time goes: the main process only cuts the input into blocks of whole lines
(``read_blocks.iter_tasks``) and appends the workers' token buffers to the datasets; each worker
parses its blocks (a fast JSON parser when installed), encodes all their texts in one tokenizer
call and decides the records (megatron_th/data/preprocess_worker.py), so reading, encoding and
writing overlap and no per-document Python object crosses a process boundary. The output is the
same, byte for byte, whatever ``--workers``, ``--chunk-size`` or JSON parser.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from contextlib import contextmanager
from itertools import islice

import numpy as np

from megatron_th.cli.parser import ArgumentParser
from megatron_th.data import preprocess_worker, read_blocks, readers
from megatron_th.data.indexed import IndexedDatasetBuilder, best_token_dtype
from megatron_th.data.preprocess_worker import EMPTY, TOKENIZER_ERROR  # noqa: F401  (re-exported)
from megatron_th.data.tokenizer import load_tokenizer
from megatron_th.data.worker_pool import WorkerPool
from megatron_th.utils.bars import format_sizeof, progress_bar, write


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description="Tokenize jsonl/jsonl.gz/parquet documents into Megatron-compatible .bin/.idx files.")
    p.add_argument("--input", nargs="+", required=True, help="input files or globs, read in this order")
    p.add_argument("--json-keys", nargs="+", default=["text"],
                   help="keys to tokenize; each gets its own {prefix}_{key}_document dataset")
    p.add_argument("--tokenizer-model", required=True,
                   help="sentencepiece .model file, or hf:<dir> for a Hugging Face tokenizer")
    p.add_argument("--output-prefix", required=True, help="output path prefix")
    p.add_argument("--append-eod", action="store_true", help="append the EOD (EOS) token to every document")
    # 256 lines (~0.5 MB of web text) per task: the main process's cost is mostly per task (0.18
    # CPU-s per 40 MB at 64 lines, 0.10 at 512, measured on a busy 2-core machine), and on a big node
    # it has to keep up with every worker
    add_run_arguments(p, "lines", chunk_size=256)
    return p


def add_run_arguments(p: argparse.ArgumentParser, items: str, chunk_size: int = 64) -> None:
    """The flags every preprocessing tool shares: --workers, --chunk-size (``items`` per task,
    default ``chunk_size``), --strict, --show-errors, --quiet."""
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (1 = in this process)")
    p.add_argument("--chunk-size", type=int, default=chunk_size, help=f"{items} per task sent to a worker")
    p.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    p.add_argument("--show-errors", type=int, default=5, help="how many bad records to report individually")
    p.add_argument("--quiet", action="store_true", help="no progress output")


_TOK = None
_OPTS = None
_LOADS = None


def _init_worker(spec):
    global _TOK
    _TOK = load_tokenizer(spec)


def _init_task_worker(init):
    """Worker set-up for ``run``: ``init`` = (tokenizer spec, preprocess_worker.Options)."""
    global _OPTS, _LOADS
    _init_worker(init[0])
    _OPTS, _LOADS = init[1], read_blocks.fast_json()[1]


def _run_task(task):
    return preprocess_worker.run_task(_TOK, _OPTS, _LOADS, task)


def _encode_value(text: str):
    """ids (a list), or ``(reason, detail)`` when the tokenizer cannot take the text or it is blank
    once the tokenizer's normalization has run (``empty_text``), with the tokenizer ``_init_worker``
    loaded: ``preprocess_worker.encode_values`` of one text (with many texts, call that: one batch)."""
    v = preprocess_worker.encode_values(_TOK, [text])[0]
    return v.tolist() if isinstance(v, np.ndarray) else v


BadInput = readers.BadRecord


class RecordReader:
    """Every record of ``paths`` in chunks of ``chunk_size``, in order, as ``(where, payload, bad)``;
    record-level errors travel as ``bad = {"*": (reason, detail)}`` (payload ``{}``) so that all
    decisions (and the --strict error) happen in input order after encoding. ``payload`` is
    ``{key: text}`` for ``keys``, or the record's whole object with ``keys=None`` (chat records,
    megatron_th/data/preprocess_sft.py). Counts ``docs_read`` and ``blank_lines`` into ``summary``;
    ``bytes_done`` is the input consumed so far (for the progress bar)."""

    def __init__(self, paths, keys, chunk_size: int, summary: Counter, rejects: readers.Rejects):
        self.paths, self.keys, self.chunk_size, self.summary, self.rejects = paths, keys, chunk_size, summary, rejects
        self.bytes_done = 0
        self._file_start = {}
        start = 0
        for p in paths:
            self._file_start.setdefault(p, start)
            start += readers.input_bytes([p])

    def records(self):
        for rec in readers.iter_records(self.paths, self.keys):
            self.bytes_done = self._file_start[rec.path] + rec.pos
            if rec.blank:
                self.summary["blank_lines"] += 1
                continue
            self.summary["docs_read"] += 1
            self.rejects.seen(rec)
            if rec.error:
                yield rec.where, {}, {"*": (rec.error, rec.detail)}
            else:
                yield rec.where, (rec.obj if self.keys is None else rec.values), rec.bad

    def chunks(self):
        it = self.records()
        while True:
            chunk = list(islice(it, self.chunk_size))
            if not chunk:
                return
            yield chunk


@contextmanager
def worker_map(workers: int, init, initarg):
    """A ``map(func, chunks)`` giving results in input order: in ``workers`` spawned processes, each
    set up once by ``init(initarg)`` (megatron_th/data/worker_pool.py), or in this process (``init``
    called here) when ``workers`` is 1. The workers stop when the block ends (killed on an error)."""
    if workers > 1:
        with WorkerPool(workers, init, initarg) as pool:
            yield pool.imap
    else:
        init(initarg)
        yield map


def write_datasets(reader: RecordReader, builders: list, pool: tuple, encode_chunk, write_record, desc: str,
                   postfix, nothing_written, quiet: bool = False) -> None:
    """The conversion loop shared by the preprocessing tools.

    Encodes ``reader``'s chunks with ``encode_chunk`` through ``worker_map(*pool)`` (``pool`` =
    ``(workers, init, initarg)``), hands each ``(where, result)`` to ``write_record`` in input order,
    and shows the bytes read (a ``progress_bar`` called ``desc``, its postfix from ``postfix()``)
    unless ``quiet``. Then ``nothing_written()`` (an error message, or None) decides: a message is
    raised as BadInput, otherwise every ``IndexedDatasetBuilder`` in ``builders`` is finalized (each
    renamed into place). Any error discards all of them, so no partial dataset is left."""
    def handle(chunk):
        for where, res in chunk:
            write_record(where, res)
        return reader.bytes_done

    _convert(reader.chunks(), readers.input_bytes(reader.paths), builders, pool, encode_chunk, handle, desc, postfix,
             nothing_written, quiet)


def _convert(tasks, total_bytes: int, builders: list, pool: tuple, func, handle, desc: str, postfix,
             nothing_written, quiet: bool) -> None:
    """``write_datasets``' loop over any ``tasks``: ``handle(func(task))`` in input order returns the
    input bytes consumed so far (the progress bar)."""
    progress = progress_bar(total_bytes, desc, unit="B", unit_scale=True, disable=quiet)
    try:
        with worker_map(*pool) as pmap:
            for result in pmap(func, tasks):
                done = handle(result)
                progress.set_postfix_str(postfix(), refresh=False)
                progress.update(done - progress.n)
        error = nothing_written()
        if error:
            raise BadInput(error)
        for b in builders:
            b.finalize()
    except BaseException:
        for b in builders:
            b.discard()
        raise
    finally:
        progress.close()


def _log(msg: str) -> None:
    write(msg, file=sys.stderr)


def run(args, log=_log) -> Counter:
    """Runs the conversion; returns the summary counters (also printed). Progress (bytes read) goes
    to stderr through ``megatron_th.utils.bars.progress_bar`` unless ``args.quiet``."""
    t0 = time.monotonic()
    paths = readers.expand_inputs(args.input)
    if args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    read_blocks.fast_json()  # a bad MEGATRON_TH_JSON is an error before any work
    tok = load_tokenizer(args.tokenizer_model)
    dtype = best_token_dtype(tok.vocab_size)
    summary: Counter = Counter()
    rejects = readers.Rejects(summary, args.strict, args.show_errors, log)
    builders = {k: IndexedDatasetBuilder(f"{args.output_prefix}_{k}_document", dtype) for k in args.json_keys}
    opts = preprocess_worker.Options(tuple(args.json_keys), bool(args.append_eod), int(tok.eod), dtype.str)

    def handle(res: dict) -> int:  # one task's result, in input order
        for where, reason, detail, action, count in res["events"]:
            rejects.add(where, reason, detail, action=action, count=count)
        summary.update(res["counts"])
        rejects.seen_counts(res["keys"])
        for k, b in builders.items():
            b.add_documents(res["tokens"][k], res["lengths"][k])
        return res["pos"]

    _convert(read_blocks.iter_tasks(paths, args.json_keys, args.chunk_size), readers.input_bytes(paths),
             list(builders.values()), (args.workers, _init_task_worker, (args.tokenizer_model, opts)), _run_task,
             handle, "tokenizing", lambda: f"docs {summary['docs_read']}, tokens {format_sizeof(summary['tokens'])}",
             lambda: None if summary["records_written"] else _nothing_written(args, summary, rejects), args.quiet)
    summary["seconds"] = time.monotonic() - t0
    _print_summary(args, summary, log)
    return summary


def _nothing_written(args, s: Counter, rejects: readers.Rejects) -> str:
    """The one-line reason a run wrote no document (the earliest point to stop unusable data)."""
    where = "--input " + " ".join(args.input)
    if not s["docs_read"]:
        return f"{where}: no records (the input is empty)"
    missing = [k for k in args.json_keys if not rejects.keys_seen[k]]
    if len(missing) == len(args.json_keys):
        keys = " or ".join(repr(k) for k in missing)
        return (f"{where}: no record had key {keys}; keys seen: {rejects.describe_keys()}; "
                f"choose the text field with --json-keys")
    skipped = ", ".join(f"{k[len('skipped_'):].replace('_', ' ')} {v}" for k, v in sorted(s.items())
                        if k.startswith("skipped_"))
    return f"{where}: no documents written: all {s['docs_read']} records were skipped ({skipped})"


def _print_summary(args, s: Counter, log) -> None:
    written = sum(v for k, v in s.items() if k.startswith("docs_written_"))
    skipped = {k[len("skipped_"):]: v for k, v in s.items() if k.startswith("skipped_")}
    secs = s["seconds"]
    empties = {k[len("empty_value_"):]: v for k, v in s.items() if k.startswith("empty_value_")}
    log(f"done: {s['docs_read']} records read, {written} documents written, "
        f"{sum(skipped.values())} skipped"
        + (" (" + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(skipped.items())) + ")" if skipped else "")
        + f"; {format_sizeof(s['tokens'])} tokens in {secs:.1f}s "
        f"({format_sizeof(s['tokens'] / max(secs, 1e-9))} tokens/s)"
        + ("; empty values written as empty documents: " + ", ".join(f"{k} {v}" for k, v in empties.items())
           if empties else ""))
    for k in args.json_keys:
        log(f"wrote {args.output_prefix}_{k}_document.bin/.idx")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        print("error: --workers must be >= 1", file=sys.stderr)
        return 2
    try:
        run(args)
    except (BadInput, FileNotFoundError, ValueError, ImportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
