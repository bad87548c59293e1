"""jsonl / jsonl.gz / parquet -> Megatron ``{prefix}_{key}_document.bin/.idx`` (``megatron-th-preprocess``,
tools/preprocess_data.py).

Documents keep their input order whatever ``--workers``; each document's tokens are exactly the
tokenizer's ids for its text (nothing prepended), followed by EOD with ``--append-eod``. Bad
records are counted by reason, the first few reported as ``file:line``, and skipped (``--strict``
makes them fatal). Outputs appear under their final names only when everything succeeded.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from collections import Counter
from itertools import islice

from megatron_th.data import readers
from megatron_th.data.indexed import IndexedDatasetBuilder, best_token_dtype
from megatron_th.data.tokenizer import load_tokenizer
from megatron_th.utils.bars import format_sizeof, progress_bar, write

EMPTY = "empty_text"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Tokenize jsonl/jsonl.gz/parquet documents into Megatron-compatible .bin/.idx files.")
    p.add_argument("--input", nargs="+", required=True, help="input files or globs, read in this order")
    p.add_argument("--json-keys", nargs="+", default=["text"],
                   help="keys to tokenize; each gets its own {prefix}_{key}_document dataset")
    p.add_argument("--tokenizer-model", required=True,
                   help="sentencepiece .model file, or hf:<dir> for a Hugging Face tokenizer")
    p.add_argument("--output-prefix", required=True, help="output path prefix")
    p.add_argument("--append-eod", action="store_true", help="append the EOD (EOS) token to every document")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (1 = in this process)")
    p.add_argument("--chunk-size", type=int, default=64, help="documents per task sent to a worker")
    p.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    p.add_argument("--show-errors", type=int, default=5, help="how many bad records to report individually")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


_TOK = None


def _init_worker(spec):
    global _TOK
    _TOK = load_tokenizer(spec)


def _encode_chunk(chunk):
    """chunk: list of {key: text}; returns list of {key: ids}."""
    out = []
    for texts in chunk:
        out.append({k: _TOK.encode(t) for k, t in texts.items()})
    return out


class BadInput(ValueError):
    pass


class _Reader:
    """Valid records in chunks; counts and reports the bad ones as it goes."""

    def __init__(self, args, paths, summary: Counter, log):
        self.args, self.paths, self.summary, self.log = args, paths, summary, log
        self.bytes_done = 0
        self.shown = 0
        self._file_start = {}
        start = 0
        for p in paths:
            self._file_start.setdefault(p, start)
            start += readers.input_bytes([p])

    def _bad(self, where: str, reason: str, detail: str):
        self.summary[f"skipped_{reason}"] += 1
        msg = f"{where}: {reason.replace('_', ' ')}" + (f" ({detail})" if detail else "")
        if self.args.strict:
            raise BadInput(msg)
        if self.shown < self.args.show_errors:
            self.log(f"warning: {msg}; skipped")
            self.shown += 1

    def records(self):
        for rec in readers.iter_records(self.paths, self.args.json_keys):
            self.summary["docs_read"] += 1
            self.bytes_done = self._file_start[rec.path] + rec.pos
            if rec.error:
                self._bad(rec.where, rec.error, rec.detail)
                continue
            texts = {}
            for k, t in rec.texts.items():
                if t.strip():
                    texts[k] = t
                else:
                    self.summary[f"skipped_{EMPTY}"] += 1
            if texts:
                yield texts

    def chunks(self):
        it = self.records()
        while True:
            chunk = list(islice(it, self.args.chunk_size))
            if not chunk:
                return
            yield chunk


def _log(msg: str) -> None:
    write(msg, file=sys.stderr)


def run(args, log=_log) -> Counter:
    """Runs the conversion; returns the summary counters (also printed). Progress (bytes read) goes
    to stderr through ``megatron_th.utils.bars.progress_bar`` unless ``args.quiet``."""
    t0 = time.monotonic()
    paths = readers.expand_inputs(args.input)
    tok = load_tokenizer(args.tokenizer_model)
    dtype = best_token_dtype(tok.vocab_size)
    summary: Counter = Counter()
    reader = _Reader(args, paths, summary, log)
    total_bytes = readers.input_bytes(paths)
    progress = progress_bar(total_bytes, "tokenizing", unit="B", unit_scale=True, disable=args.quiet)
    builders = {k: IndexedDatasetBuilder(f"{args.output_prefix}_{k}_document", dtype) for k in args.json_keys}
    pool = None
    try:
        if args.workers > 1:
            pool = mp.get_context("spawn").Pool(args.workers, _init_worker, (args.tokenizer_model,))
            encoded = pool.imap(_encode_chunk, reader.chunks(), chunksize=1)
        else:
            _init_worker(args.tokenizer_model)
            encoded = map(_encode_chunk, reader.chunks())
        for chunk in encoded:
            for doc in chunk:
                for k, ids in doc.items():
                    if args.append_eod:
                        ids = ids + [tok.eod]
                    builders[k].add_document(ids)
                    summary["tokens"] += len(ids)
                    summary[f"docs_written_{k}"] += 1
            progress.set_postfix_str(f"docs {summary['docs_read']}, tokens {format_sizeof(summary['tokens'])}",
                                     refresh=False)
            progress.update(reader.bytes_done - progress.n)
        for b in builders.values():
            b.finalize()
    except BaseException:
        for b in builders.values():
            b.discard()
        raise
    finally:
        if pool is not None:
            pool.terminate()
        progress.close()
    summary["seconds"] = time.monotonic() - t0
    _print_summary(args, summary, log)
    return summary


def _print_summary(args, s: Counter, log) -> None:
    written = sum(v for k, v in s.items() if k.startswith("docs_written_"))
    skipped = {k[len("skipped_"):]: v for k, v in s.items() if k.startswith("skipped_")}
    secs = s["seconds"]
    log(f"done: {s['docs_read']} records read, {written} documents written, "
        f"{sum(skipped.values())} skipped"
        + (" (" + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(skipped.items())) + ")" if skipped else "")
        + f"; {format_sizeof(s['tokens'])} tokens in {secs:.1f}s "
        f"({format_sizeof(s['tokens'] / max(secs, 1e-9))} tokens/s)")
    for k in args.json_keys:
        log(f"wrote {args.output_prefix}_{k}_document.bin/.idx")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        print("error: --workers must be >= 1", file=sys.stderr)
        return 2
    try:
        run(args)
    except (BadInput, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
