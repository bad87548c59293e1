"""Train a sentencepiece tokenizer with Thai-correct defaults (tools/train_tokenizer.py).

Why these defaults (each checked on this machine):
- ``identity`` normalization: ``nmt_nfkc`` splits ำ (U+0E33) into U+0E4D U+0E32 and turns
  zero-width / no-break spaces into spaces, so decode(encode(x)) != x for ordinary Thai.
- ``character_coverage=1.0`` plus the Thai block and printable ASCII as required characters:
  0.9995 sends rare Thai letters, ๋, Thai digits and some ASCII to byte tokens.
- byte fallback (nothing is ever <unk>), newline as its own symbol, no dummy prefix, no
  whitespace folding: the text round-trips exactly.
- ``max_sentence_length`` counts bytes (Thai is 3 bytes a character) and sentencepiece silently
  drops longer lines: the limit is high and the lines over it are counted and reported.
- zero-width spaces and BOMs are removed first (they are invisible noise in scraped Thai).

Special ids are fixed: <unk> 0, <s> 1, </s> 2 (= EOD), <pad> 3; "\\n" is id 4.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time

from megatron_th.cli.parser import ArgumentParser
from megatron_th.data import readers
from megatron_th.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, SentencePieceTokenizer, strip_invisible

THAI_CHARS = "".join(chr(c) for c in list(range(0x0E01, 0x0E3B)) + list(range(0x0E3F, 0x0E5C)))
ASCII_CHARS = "".join(chr(c) for c in range(0x21, 0x7F))  # printable, without the space


def script_of(text: str) -> str:
    """'thai' or 'latin' by the majority of letters; 'other' when neither has any."""
    thai = sum(1 for ch in text if "\u0e00" <= ch <= "\u0e7f")
    latin = sum(1 for ch in text if ch.isascii() and ch.isalpha())
    if thai == latin == 0:
        return "other"
    return "thai" if thai >= latin else "latin"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="train_tokenizer.py", description=__doc__.split("\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--input", nargs="+", required=True, help="jsonl/jsonl.gz/parquet files or globs")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="text fields to train on")
    p.add_argument("--output", required=True, help="model file to write (e.g. th_en.model)")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])
    p.add_argument("--heldout-every", type=int, default=20,
                   help="every N-th document is held out of training and used for the report (0: none)")
    p.add_argument("--character-coverage", type=float, default=1.0)
    p.add_argument("--normalization", default="identity",
                   help="sentencepiece normalization rule (identity keeps Thai intact)")
    p.add_argument("--max-sentence-length", type=int, default=1 << 16,
                   help="longest training line in BYTES; longer lines are skipped and counted")
    p.add_argument("--split-digits", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--num-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    p.add_argument("--show-errors", type=int, default=5, help="how many bad records to report individually")
    p.add_argument("--quiet", action="store_true")
    return p


def _documents(args, log=None):
    """Each readable, non-blank value (after ``strip_invisible``) of each record, in input order.
    Bad records and values are counted by reason and skipped as in tools/preprocess_data.py
    (``readers.Rejects``: the first ``--show-errors`` named as file:line, ``--strict`` stops at the
    first); a summary line gives the counts."""
    from collections import Counter

    log = log or (lambda m: None if args.quiet else print(m, file=sys.stderr))
    paths = readers.expand_inputs(args.input)
    counts: Counter = Counter()
    rejects = readers.Rejects(counts, args.strict, args.show_errors, log, prefix="")
    for rec in readers.iter_records(paths, args.json_keys):
        if rec.blank:
            continue
        if rec.error:
            rejects.add(rec.where, rec.error, rec.detail)
            continue
        for k in args.json_keys:
            if k in rec.bad:
                rejects.add(rec.where, *rec.bad[k])
                continue
            t = strip_invisible(rec.values[k])
            if t.strip():
                yield t
            else:
                rejects.add(rec.where, "empty_text", k)
    if counts:
        log(f"warning: {sum(counts.values())} values skipped ("
            + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(counts.items())) + ")")


def evaluate(tok, docs: list[str]) -> dict:
    """Tokens per character by script on held-out documents, and exact round trip."""
    stats = {}
    roundtrip_failures = 0
    for script in ("thai", "latin"):
        chosen = [d for d in docs if script_of(d) == script]
        chars = sum(len(d) for d in chosen)
        ids = tok.encode_batch(chosen)
        ntok = sum(len(x) for x in ids)
        byte_tok = sum(1 for x in ids for i in x if tok.id_to_piece(i).startswith("<0x"))
        roundtrip_failures += sum(tok.decode(x) != d for x, d in zip(ids, chosen))
        stats[script] = {"docs": len(chosen), "chars": chars, "tokens": ntok,
                         "tokens_per_char": ntok / chars if chars else float("nan"),
                         "byte_fallback_tokens": byte_tok}
    stats["roundtrip_failures"] = roundtrip_failures
    return stats


def train(args) -> dict:
    import sentencepiece as spm

    t0 = time.monotonic()
    train_lines, heldout = [], []
    too_long = 0
    for n, doc in enumerate(_documents(args)):
        if args.heldout_every and n % args.heldout_every == args.heldout_every - 1:
            heldout.append(doc)
            continue
        for line in doc.split("\n"):
            if not line:
                continue
            if len(line.encode("utf-8")) > args.max_sentence_length:
                too_long += 1
            train_lines.append(line)
    if not train_lines:
        raise ValueError(f"--input {' '.join(args.input)}: no text to train on")
    if too_long and not args.quiet:
        print(f"warning: {too_long} lines exceed --max-sentence-length {args.max_sentence_length} bytes "
              "and are skipped by sentencepiece; raise the limit to keep them", file=sys.stderr)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(train_lines), model_writer=model,
        vocab_size=args.vocab_size, model_type=args.model_type,
        normalization_rule_name=args.normalization, character_coverage=args.character_coverage,
        required_chars=THAI_CHARS + ASCII_CHARS, byte_fallback=True, user_defined_symbols=["\n"],
        add_dummy_prefix=False, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        split_digits=args.split_digits, max_sentence_length=args.max_sentence_length,
        input_sentence_size=0, num_threads=args.num_threads,
        unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID, minloglevel=2)
    tmp = args.output + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(model.getvalue())
    os.replace(tmp, args.output)
    tok = SentencePieceTokenizer(args.output)
    stats = evaluate(tok, heldout) if heldout else {}
    stats.update(train_lines=len(train_lines), heldout_docs=len(heldout), too_long_lines=too_long,
                 vocab_size=tok.vocab_size, seconds=time.monotonic() - t0)
    return stats


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        stats = train(args)
    except (ValueError, OSError) as e:  # readers.BadRecord (--strict) is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: vocab {stats['vocab_size']}, {stats['train_lines']} training lines, "
          f"{stats['too_long_lines']} too long, {stats['seconds']:.1f}s")
    for script in ("thai", "latin"):
        s = stats.get(script)
        if s and s["docs"]:
            print(f"held-out {script:5s}: {s['docs']} docs, {s['chars']} chars, "
                  f"{s['tokens_per_char']:.3f} tokens/char, {s['byte_fallback_tokens']} byte-fallback tokens")
    if stats.get("roundtrip_failures"):
        print(f"error: decode(encode(text)) differs on {stats['roundtrip_failures']} held-out documents",
              file=sys.stderr)
        return 1
    if stats.get("heldout_docs"):
        print("round trip: exact on every held-out document")
    return 0
