"""Extend a sentencepiece BPE model with the pieces of another one (tools/extend_tokenizer.py).

The use case: an English base model (e.g. a Llama ``tokenizer.model``) spends several tokens per
Thai character. ``extend_sentencepiece(base, add, out)`` writes ``out`` = every piece of ``base``
at its id, unchanged, followed by every piece of ``add`` (e.g. a Thai model from
``tools/train_tokenizer.py``) that ``base`` lacks. ``tools/convert_from_hf.py --extend-vocab out``
then grows the embedding for the new ids.

Scores: sentencepiece BPE encodes by repeatedly merging the adjacent pair whose concatenation is
the piece with the highest score. The appended normal pieces get scores below the base's lowest,
in the add model's order, so that

- every merge of the base still comes first: new merges only join what the base leaves unjoined,
  so text the base already handles (English) keeps its tokens or gets a few fewer;
- among themselves the new merges keep the add model's order, so Thai text ends up segmented
  about as the add model segments it (tested: within 2% of its token count).

Pieces the other way round (new scores above the base's) would re-segment the base's own text.
Control, unknown, byte and unused pieces of the add model are not copied (the base has its own).
User-defined pieces are, with score 0 as sentencepiece gives them: e.g. our models' ``"\n"``, so
that newlines become that new token instead of the base's byte piece ``<0x0A>``. The normalizer
and trainer settings are the base's. Needs protobuf (the ``[hf]`` extra).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import sentencepiece as spm

from megatron_th.cli.parser import ArgumentParser
from megatron_th.convert.hf_tokenizer import NORMAL, USER_DEFINED, load_model_proto

BPE = 2


def resolve_model(path: str) -> str:
    """A sentencepiece model file, or a Hugging Face directory holding ``tokenizer.model``."""
    path = str(path)
    if os.path.isdir(path):
        inner = os.path.join(path, "tokenizer.model")
        if not os.path.isfile(inner):
            raise FileNotFoundError(f"{path}: no tokenizer.model in this directory (only sentencepiece "
                                    "tokenizers can be extended)")
        return inner
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such sentencepiece model")
    return path


def _load(path: str, what: str):
    model = resolve_model(path)
    try:
        proto = load_model_proto(model)
    except ImportError:
        raise
    except Exception as e:  # protobuf DecodeError: e.g. a tiktoken file named tokenizer.model
        raise ValueError(f"{what} {model}: not a sentencepiece model ({type(e).__name__})") from None
    if not len(proto.pieces):
        raise ValueError(f"{what} {model}: not a sentencepiece model (no pieces)")
    return model, proto


def unreachable_pieces(proto, ids) -> list[int]:
    """The ids among ``ids`` (normal pieces) that no sequence of BPE merges can build: no split
    into two pieces that can themselves be built. Single characters are always reachable (they
    are where sentencepiece BPE starts)."""
    pieces = {p.piece for p in proto.pieces if p.type in (NORMAL, USER_DEFINED)}
    memo: dict[str, bool] = {}

    def ok(s: str) -> bool:
        if len(s) == 1:
            return True
        if s not in memo:
            memo[s] = False  # no cycles: the halves are shorter
            memo[s] = any(s[:k] in pieces and s[k:] in pieces and ok(s[:k]) and ok(s[k:]) for k in range(1, len(s)))
        return memo[s]

    return [i for i in ids if not ok(proto.pieces[i].piece)]


def extend_sentencepiece(base_model: str, add_model: str, out_path: str, log=print) -> dict:
    """Write ``out_path`` = ``base_model`` + the pieces of ``add_model`` it lacks (see the module
    docstring). Either model may be a directory with a ``tokenizer.model``. Returns a summary."""
    base_path, base = _load(base_model, "--base")
    add_path, add = _load(add_model, "--add")
    if base.trainer_spec.model_type != BPE:
        raise ValueError(f"--base {base_path}: a {'unigram' if base.trainer_spec.model_type == 1 else 'non-BPE'} "
                         "model; only BPE models are extended (appended scores rank BPE merges)")
    base_size = len(base.pieces)
    have = {p.piece for p in base.pieces}
    floor = min(p.score for p in base.pieces) - 1.0
    normal = sorted((i for i, p in enumerate(add.pieces) if p.type == NORMAL), key=lambda i: (-add.pieces[i].score, i))
    rank = {i: k for k, i in enumerate(normal)}
    added_normal = added_user = existing = 0
    for i, p in enumerate(add.pieces):
        if p.type not in (NORMAL, USER_DEFINED):
            continue  # control / unknown / byte / unused: the base has its own
        if p.piece in have:
            existing += 1
            continue
        new = base.pieces.add()
        new.piece, new.type = p.piece, p.type
        if p.type == NORMAL:
            new.score = floor - rank[i]
            added_normal += 1
        else:
            new.score = 0.0
            added_user += 1
        have.add(p.piece)
    added = added_normal + added_user
    base.trainer_spec.vocab_size = len(base.pieces)
    unreachable = unreachable_pieces(base, range(base_size, len(base.pieces))) if added else []
    unreachable = [i for i in unreachable if base.pieces[i].type == NORMAL]
    data = base.SerializeToString()
    sp = spm.SentencePieceProcessor(model_proto=data)  # it loads
    check, original = load_model_proto(data), load_model_proto(base_path)
    for i in range(base_size):
        if check.pieces[i] != original.pieces[i]:
            raise AssertionError(f"piece {i} changed: {original.pieces[i].piece!r} -> {check.pieces[i].piece!r}")
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(out_path) + ".", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    summary = {"output": out_path, "base": base_path, "add": add_path, "base_size": base_size,
               "added": added, "added_normal": added_normal, "added_user_defined": added_user,
               "already_in_base": existing, "vocab_size": sp.get_piece_size(), "unreachable": len(unreachable),
               "lowest_base_score": floor + 1.0}
    log(f"wrote {out_path}: {base_size} base pieces + {added} added ({added_normal} normal, {added_user} "
        f"user-defined; {existing} of {add_path}'s pieces were already in the base) = {sp.get_piece_size()}")
    if unreachable:
        log(f"warning: {len(unreachable)} added pieces cannot be built by BPE merges and will never be produced "
            f"(e.g. {[base.pieces[i].piece for i in unreachable[:5]]}); is {add_path} a unigram model?")
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="extend_tokenizer.py", description=__doc__.split("\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--base", required=True,
                   help="base sentencepiece BPE model, or an HF model directory with tokenizer.model")
    p.add_argument("--add", required=True, help="sentencepiece model whose missing pieces are appended (e.g. Thai)")
    p.add_argument("--output", required=True, help="extended model to write (use it as --extend-vocab)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = extend_sentencepiece(args.base, args.add, args.output)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for script, (before, after, chars) in thai_english_cost(summary["base"], args.output).items():
        print(f"embedded {script} corpus: {before / chars:.3f} -> {after / chars:.3f} tokens/char "
              f"({before} -> {after} tokens)")
    return 0


def thai_english_cost(base_model: str, new_model: str) -> dict:
    """{script: (base tokens, new tokens, characters)} on the embedded Thai and English corpus."""
    import json

    from megatron_th.data.embedded import CORPUS_DIR
    from megatron_th.data.tokenizer import SentencePieceTokenizer

    old, new = SentencePieceTokenizer(base_model), SentencePieceTokenizer(new_model)
    out = {}
    for script, names in (("thai", ("th_news", "th_wiki", "th_story")), ("english", ("en_misc",))):
        texts = []
        for n in names:
            path = os.path.join(CORPUS_DIR, n + ".jsonl")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    texts += [json.loads(line)["text"] for line in f if line.strip()]
        if texts:
            out[script] = (sum(map(len, old.encode_batch(texts))), sum(map(len, new.encode_batch(texts))),
                           sum(map(len, texts)))
    return out
