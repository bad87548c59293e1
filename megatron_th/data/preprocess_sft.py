"""Chat / instruction records -> SFT datasets ``PREFIX_tokens`` and ``PREFIX_loss_mask``
(tools/preprocess_sft.py).

Output: two Megatron-compatible indexed datasets (megatron_th/data/indexed.py), record-aligned:
document i of both is conversation i (input order, whatever ``--workers``), with the same length.

* ``PREFIX_tokens.bin/.idx``: the rendered conversation's token ids (megatron_th/data/chat_template.py),
  dtype as tools/preprocess_data.py picks it (``best_token_dtype``: uint16 below 65,500 tokens,
  else int32). Nothing is appended: the template's own tokens end the conversation.
* ``PREFIX_loss_mask.bin/.idx``: uint8, ``loss_mask[t] = 1`` when token t is an assistant token
  to train on (each assistant turn's content and the end-of-turn tokens the template writes after
  it), 0 for system / user / tool turns and role headers; all 1 with ``--train-on-prompts``
  (axolotl's ``train_on_inputs``).

Convention for the training side: the mask is on the *tokens*, not on the labels. The model
predicts token t+1 at position t, so the loss term at position t counts when
``loss_mask[t + 1] == 1``; the first token of a conversation is never a label, and a packed
sequence must not predict one conversation's first token from the previous one.

Records are read with megatron_th/data/readers.py (jsonl, jsonl.gz, parquet), shaped by
megatron_th/data/sft_records.py; bad records (unreadable, not a chat shape, unknown role, non-string
content, no assistant turn, a template that fails on them) are counted by reason and the first
``--show-errors`` reported as ``file:line``; ``--strict`` stops at the first. Filters, counted as
``filtered_<reason>``: ``empty_assistant_turn`` (a blank assistant turn drops its conversation),
``short_response_words`` / ``short_response_tokens`` (assistant turns together shorter than
``--min-response-words`` / ``--min-response-tokens``; words as megatron_th/data/sft_filters.py
counts them, tokens of the assistant contents alone), ``overlong`` (longer than
``--max-seq-length`` with ``--overlong drop``, or nothing left to train on after truncation);
``--overlong truncate`` cuts the last assistant turn (sft_filters.truncate; ``truncated``).

The conversion loop (``convert``), the shared flags (``add_chat_arguments``), the summary words
(``outcome``) and ``cli`` also serve the DPO tool (megatron_th/data/preprocess_dpo.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial

import numpy as np

from megatron_th.cli.parser import ArgumentParser
from megatron_th.data import readers
from megatron_th.data.chat_template import ChatEncoder, TemplateError, resolve_template
from megatron_th.data.indexed import IndexedDatasetBuilder, best_token_dtype
from megatron_th.data.preprocess import TOKENIZER_ERROR, RecordReader, add_run_arguments, write_datasets
from megatron_th.data.sft_filters import count_words, truncate
from megatron_th.data.sft_records import RecordError, assistant_texts, normalize_record
from megatron_th.data.tokenizer import load_tokenizer
from megatron_th.utils.bars import format_sizeof, write

BadInput = readers.BadRecord
# the dataset names' suffixes, as megatron_th/data/sft_dataset.py reads them (not imported: it needs torch)
TOKENS_SUFFIX, LOSS_MASK_SUFFIX = "_tokens", "_loss_mask"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description="Render chat/instruction records with a chat template into record-aligned "
                    "PREFIX_tokens and PREFIX_loss_mask .bin/.idx datasets for --sft training.")
    add_chat_arguments(p, "messages, conversations (ShareGPT), prompt/completion or instruction/input/output "
                          "records", "PREFIX_tokens.bin/.idx and PREFIX_loss_mask.bin/.idx", "conversation")
    p.add_argument("--train-on-prompts", action="store_true",
                   help="loss on every token, prompts included (axolotl's train_on_inputs)")
    p.add_argument("--min-response-tokens", type=int, default=0,
                   help="drop conversations whose assistant turns hold fewer tokens together")
    p.add_argument("--min-response-words", type=int, default=0,
                   help="drop conversations whose assistant turns hold fewer words together (Thai: estimated)")
    add_run_arguments(p, "records")
    return p


def add_chat_arguments(p: argparse.ArgumentParser, records: str, outputs: str, unit: str, length: str = "") -> None:
    """The flags of the chat-template tools (this one and megatron_th/data/preprocess_dpo.py):
    --input (files of ``records``), --tokenizer-model, --output-prefix (writes ``outputs``),
    --chat-template, --max-seq-length and --overlong (of a ``unit``, measured as ``length``)."""
    p.add_argument("--input", nargs="+", required=True,
                   help=f"jsonl / jsonl.gz / parquet files or globs with {records}, read in this order")
    p.add_argument("--tokenizer-model", required=True,
                   help="sentencepiece .model file, or hf:<dir> for a Hugging Face tokenizer")
    p.add_argument("--output-prefix", required=True, help=f"writes {outputs}")
    p.add_argument("--chat-template", default=None,
                   help="built-in name (chatml, llama3) or a Jinja file; default: the tokenizer's own "
                        "chat_template, else chatml")
    p.add_argument("--max-seq-length", type=int, default=None,
                   help=f"longest {unit} in tokens{length} (set it to the training --seq-length)")
    p.add_argument("--overlong", choices=("truncate", "drop"), default="drop",
                   help=f"what to do with a {unit} longer than --max-seq-length")


@dataclass(frozen=True)
class Options:
    """What a worker needs (picklable): the tokenizer spec, the resolved template and the filters."""
    tokenizer_model: str
    template: str
    template_name: str
    train_on_prompts: bool = False
    max_seq_length: int | None = None
    overlong: str = "drop"
    min_response_tokens: int = 0
    min_response_words: int = 0


_STATE = None  # (tokenizer, ChatEncoder, Options) of this process


def _init_worker(opts: Options):
    global _STATE
    tok = load_tokenizer(opts.tokenizer_model)
    _STATE = (tok, ChatEncoder(tok, opts.template, opts.template_name), opts)


def _set_state(state) -> None:
    global _STATE
    _STATE = state


def encode_record(obj, tok, enc: ChatEncoder, opts: Options):
    """One record -> ``("ok", ids, mask, flags)``, ``("skip", reason, detail)`` (a bad record) or
    ``("filter", reason)``; ``flags`` holds ``truncated`` / ``retokenized`` when they apply."""
    try:
        messages = normalize_record(obj)
        texts = assistant_texts(messages)
        if any(not t.strip() for t in texts):
            return ("filter", "empty_assistant_turn")
        if opts.min_response_words and sum(map(count_words, texts)) < opts.min_response_words:
            return ("filter", "short_response_words")
        if opts.min_response_tokens and sum(len(tok.encode(t)) for t in texts) < opts.min_response_tokens:
            return ("filter", "short_response_tokens")
        ids, mask, retokenized = enc.encode(messages)
    except RecordError as e:
        return ("skip", e.reason, e.detail)
    except Exception as e:  # whatever the tokenizer library raises for this one record
        return ("skip", TOKENIZER_ERROR, f"{type(e).__name__}: {str(e)[:80]}")
    if not any(mask):
        return ("skip", "template_error", "the template marked no assistant token")
    flags = ("retokenized",) if retokenized else ()
    if opts.max_seq_length and len(ids) > opts.max_seq_length:
        cut = None
        if opts.overlong == "truncate":
            cut = truncate(ids, mask, opts.max_seq_length, enc.end_of_turn, enc.end_of_turn_mask)
        if cut is None:
            return ("filter", "overlong")
        (ids, mask), flags = cut, flags + ("truncated",)
    if opts.train_on_prompts:
        mask = [1] * len(ids)
    return ("ok", ids, mask, flags)


def encode_records(encode, chunk):
    """``encode(obj, tokenizer, ChatEncoder, Options)`` of each record of a RecordReader chunk, with
    this process's tokenizer and encoder (a worker's, or the main process's with ``--workers 1``);
    unreadable records pass as ``("skip", reason, detail)``. Returns ``[(where, result)]``."""
    tok, enc, opts = _STATE
    return [(where, ("skip", *bad["*"]) if "*" in bad else encode(obj, tok, enc, opts)) for where, obj, bad in chunk]


def _log(msg: str) -> None:
    write(msg, file=sys.stderr)


def options(args) -> tuple[Options, object]:
    """``(Options, tokenizer)`` from the parsed flags; raises ValueError / TemplateError naming a flag."""
    for flag in ("max_seq_length", "min_response_tokens", "min_response_words"):
        value = getattr(args, flag)
        if value is not None and value < (1 if flag == "max_seq_length" else 0):
            raise ValueError(f"--{flag.replace('_', '-')} must be {'positive' if flag == 'max_seq_length' else '>= 0'}")
    if args.workers < 1:
        raise ValueError("--workers must be >= 1")
    if args.overlong == "truncate" and not args.max_seq_length:
        raise ValueError("--overlong truncate needs --max-seq-length")
    tok = load_tokenizer(args.tokenizer_model)
    name, source = resolve_template(args.chat_template, tok)
    return Options(args.tokenizer_model, source, name, args.train_on_prompts, args.max_seq_length, args.overlong,
                   args.min_response_tokens, args.min_response_words), tok


def run(args, log=_log) -> Counter:
    """Runs the conversion (see the module docstring); returns the summary counters (also logged).
    Raises BadInput, TemplateError, ValueError, OSError, ImportError with one-line messages."""
    summary = convert(args, log, encode_record, (TOKENS_SUFFIX, LOSS_MASK_SUFFIX), _write_ok, "conversation",
                      "a chat shape (messages, conversations, prompt/completion or instruction/output)")
    _print_summary(args, summary, log)
    return summary


def convert(args, log, encode, outputs: tuple, write_ok, unit: str, shape: str, note=None) -> Counter:
    """The conversion loop of the chat-template tools (SFT here; DPO, megatron_th/data/preprocess_dpo.py).

    Resolves the tokenizer and template (``options``), reads ``args.input`` with RecordReader and
    encodes each record with ``encode(obj, tokenizer, ChatEncoder, Options)`` (module-level, so that
    ``--workers`` processes can run it; see ``encode_records``), in input order. Each result is
    ``("skip", reason, detail)`` (a bad record: counted, reported as file:line), ``("filter",
    reason)`` (counted as ``filtered_<reason>``) or ``("ok", ..., flags)``, which
    ``write_ok(result, builders, summary)`` writes and which counts ``<unit>s_written`` and each
    flag. Writes ``PREFIX<suffix>`` for each of ``outputs`` (uint8 for a ``_loss_mask`` suffix,
    else the token dtype), all or nothing; ``shape`` describes a usable record in the error of a
    run that writes none. ``note(tok)``: text added to the template log line. Returns the summary
    counters (``seconds`` included); raises as ``run``."""
    t0 = time.monotonic()
    paths = readers.expand_inputs(args.input)
    opts, tok = options(args)
    encoder = ChatEncoder(tok, opts.template, f"--chat-template {args.chat_template or opts.template_name}")
    log(f"chat template: {opts.template_name}; end of turn: {[tok.id_to_piece(i) for i in encoder.end_of_turn]}"
        + (note(tok) if note else ""))
    summary: Counter = Counter()
    rejects = readers.Rejects(summary, args.strict, args.show_errors, log)
    reader = RecordReader(paths, None, args.chunk_size, summary, rejects)
    builders = [IndexedDatasetBuilder(f"{args.output_prefix}{suffix}", np.uint8 if suffix.endswith(LOSS_MASK_SUFFIX)
                                      else best_token_dtype(tok.vocab_size)) for suffix in outputs]
    written = f"{unit}s_written"

    def write(where: str, res) -> None:
        if res[0] == "skip":
            rejects.add(where, res[1], res[2])
        elif res[0] == "filter":
            summary[f"filtered_{res[1]}"] += 1
        else:
            write_ok(res, builders, summary)
            summary[written] += 1
            for f in res[-1]:
                summary[f] += 1

    # one process: the tokenizer and encoder built above; workers build their own
    pool = (args.workers, _init_worker, opts) if args.workers > 1 else (1, _set_state, (tok, encoder, opts))
    write_datasets(reader, builders, pool, partial(encode_records, encode), write, "rendering",
                   lambda: f"{unit}s {summary[written]}, tokens {format_sizeof(summary['tokens'])}",
                   lambda: None if summary[written] else _nothing_written(args, summary, rejects, unit, shape),
                   args.quiet)
    summary["seconds"] = time.monotonic() - t0
    return summary


def _write_ok(res, builders, summary: Counter) -> None:
    _, ids, mask, _ = res
    builders[0].add_document(ids)
    builders[1].add_document(mask)
    summary["tokens"] += len(ids)
    summary["loss_tokens"] += sum(mask)


def _counts(s: Counter, prefix: str) -> tuple[int, str]:
    items = {k[len(prefix):]: v for k, v in s.items() if k.startswith(prefix)}
    return sum(items.values()), ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(items.items()))


def outcome(s: Counter, joiner: str = ", ", skipped_word: str = "skipped") -> str:
    """``N skipped (reason n, ...)`` and ``M filtered (...)`` of a summary, joined by ``joiner``."""
    skipped, why_skipped = _counts(s, "skipped_")
    filtered, why_filtered = _counts(s, "filtered_")
    return (f"{skipped} {skipped_word}" + (f" ({why_skipped})" if skipped else "") + joiner
            + f"{filtered} filtered" + (f" ({why_filtered})" if filtered else ""))


def _nothing_written(args, s: Counter, rejects: readers.Rejects, unit: str, shape: str) -> str:
    """The one-line reason a run wrote no conversation (pair, ...: ``unit``)."""
    where = "--input " + " ".join(args.input)
    if not s["docs_read"]:
        return f"{where}: no records (the input is empty)"
    if s["skipped_unknown_shape"] == s["docs_read"]:
        return f"{where}: no record has {shape}; keys seen: {rejects.describe_keys()}"
    return f"{where}: no {unit} written: of {s['docs_read']} records {outcome(s, ' and ', 'were skipped')}"


def _print_summary(args, s: Counter, log) -> None:
    secs = s["seconds"]
    log(f"done: {s['docs_read']} records read, {s['conversations_written']} conversations written, {outcome(s)}"
        + f", {s['truncated']} truncated; {format_sizeof(s['tokens'])} tokens, {format_sizeof(s['loss_tokens'])} "
        f"loss tokens ({100 * s['loss_tokens'] / max(s['tokens'], 1):.1f}%) in {secs:.1f}s"
        + (f"; {s['retokenized']} tokenized piece by piece at turn boundaries" if s["retokenized"] else ""))
    log(f"wrote {args.output_prefix}_tokens.bin/.idx and {args.output_prefix}_loss_mask.bin/.idx")


def cli(argv, parser, run_args) -> int:
    """Parses ``argv`` with ``parser()`` and calls ``run_args(args)``; bad input or flags print one
    ``error:`` line on stderr and return 1 (no traceback)."""
    args = parser().parse_args(argv)
    try:
        run_args(args)
    except (BadInput, TemplateError, FileNotFoundError, ValueError, ImportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    return cli(argv, build_parser, run)


if __name__ == "__main__":
    sys.exit(main())
