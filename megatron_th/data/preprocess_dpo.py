"""Preference pairs -> DPO datasets (tools/preprocess_dpo.py).

Output: four Megatron-compatible indexed datasets (megatron_th/data/indexed.py), record-aligned:
record i of all four is pair i (input order, whatever ``--workers``), the format
megatron_th/data/dpo_dataset.py reads:

* ``PREFIX_chosen_tokens`` / ``PREFIX_chosen_loss_mask``: the prompt followed by the chosen
  completion, and a uint8 mask with ``loss_mask[t] = 1`` when token t is a completion token;
* ``PREFIX_rejected_tokens`` / ``PREFIX_rejected_loss_mask``: the same with the rejected completion.

Tokens are uint16 below 65,500 ids, else int32 (``best_token_dtype``, as tools/preprocess_data.py).
As in SFT the mask is on tokens: the training side scores label position t when
``loss_mask[t + 1] == 1``, so the prompt must hold at least one token.

How a pair becomes tokens (record shapes in megatron_th/data/dpo_records.py):

* text (``prompt``, ``chosen``, ``rejected`` strings): ``ids(prompt) + ids(completion) + [EOS]``,
  the prompt and each completion tokenized apart (no special tokens added) and EOS counted as a
  completion token: TRL's ``DPOTrainer.tokenize_row`` (trl/trainer/dpo_trainer.py, v0.12 to
  v0.28; decoder-only models, ``add_special_tokens=False``). No chat template.
* message lists: ``prompt + completion`` rendered and masked by the chat template exactly as SFT
  renders a conversation (megatron_th/data/chat_template.py; ``--chat-template``, else the
  tokenizer's own, else chatml), the mask then restricted to the completion's assistant turns
  (assistant turns inside a multi-turn prompt are 0). Nothing is appended: the template ends the turn.

Filters, counted as ``filtered_<reason>``: ``empty_completion`` (a chosen or rejected completion
that is blank, or no tokens), ``empty_prompt`` (a text prompt of no tokens: its first completion
token could not be scored), ``identical`` (chosen and rejected give the same tokens, also when
truncation made them so), ``overlong`` (``len(prompt+chosen) + len(prompt+rejected)`` above
``--max-seq-length`` with ``--overlong drop``: a training sample packs both sides in one row of
``--seq-length``), ``overlong_prompt`` (``--overlong truncate``, but even one completion token and
its end of each side do not fit). ``--overlong truncate`` cuts completions from their end (``truncated``):
the longer side first, down to half the budget each, every side keeping at least one completion
token of its last kept turn followed by its end: EOS for text, the template's end-of-turn tokens
for message lists (megatron_th/data/sft_filters.truncate). Bad records (unreadable, not a pair,
unknown role, non-string content, a template that fails on them) are counted by reason and the
first ``--show-errors`` reported as ``file:line``; ``--strict`` stops at the first.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter

from megatron_th.cli.parser import ArgumentParser
from megatron_th.data.chat_template import TEMPLATE_ERROR, ChatEncoder
from megatron_th.data.dpo_records import SIDES, normalize_pair
from megatron_th.data.preprocess import TOKENIZER_ERROR, add_run_arguments
from megatron_th.data.preprocess_sft import (LOSS_MASK_SUFFIX, TOKENS_SUFFIX, add_chat_arguments, cli, convert,
                                             outcome)
from megatron_th.data.sft_filters import assistant_runs, truncate
from megatron_th.data.sft_records import RecordError
from megatron_th.utils.bars import write

# PREFIX_chosen_tokens, PREFIX_chosen_loss_mask, PREFIX_rejected_tokens, PREFIX_rejected_loss_mask
OUTPUTS = tuple(f"_{side}{suffix}" for side in SIDES for suffix in (TOKENS_SUFFIX, LOSS_MASK_SUFFIX))


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description="Tokenize preference pairs (prompt, chosen, rejected) into record-aligned "
                    "PREFIX_{chosen,rejected}_{tokens,loss_mask} .bin/.idx datasets for --dpo training. "
                    "Text records are tokenized as they are; message lists are rendered with the chat template.")
    add_chat_arguments(p, "prompt, chosen and rejected (strings, or message lists)",
                       "PREFIX_chosen_tokens, PREFIX_chosen_loss_mask, PREFIX_rejected_tokens and "
                       "PREFIX_rejected_loss_mask (.bin/.idx)", "pair", ", prompt+chosen plus prompt+rejected")
    add_run_arguments(p, "records")
    # SFT's flag checks and worker options (preprocess_sft.options), without SFT's own filters
    p.set_defaults(train_on_prompts=False, min_response_tokens=0, min_response_words=0)
    return p


def encode_side(prompt, completion, conversational: bool, tok, enc: ChatEncoder):
    """One side of a pair -> ``(ids, mask, end, end_mask, retokenized)``, or a filter reason (str).
    ``end`` / ``end_mask``: the tokens that close a completion (EOS, or the template's end of turn),
    kept by truncation. Raises RecordError (template errors) and what the tokenizer raises."""
    if not conversational:
        p, c = tok.encode(prompt), tok.encode(completion)
        if not p:
            return "empty_prompt"
        if not c:
            return "empty_completion"
        return p + c + [tok.eod], [0] * len(p) + [1] * (len(c) + 1), [tok.eod], [1], False
    ids, mask, retokenized = enc.encode(prompt + completion)
    earlier = sum(m["role"] == "assistant" for m in prompt)  # the prompt's own assistant turns: not scored
    if earlier:
        runs = assistant_runs(mask)
        if len(runs) != earlier + len(completion):
            raise RecordError(TEMPLATE_ERROR, f"{len(runs)} assistant spans for {earlier + len(completion)} "
                                              f"assistant turns: the prompt's cannot be told from the completion's")
        for s, e in runs[:earlier]:
            mask[s:e] = [0] * (e - s)
    if not any(mask):
        raise RecordError(TEMPLATE_ERROR, "the template marked no completion token")
    return ids, mask, enc.end_of_turn, enc.end_of_turn_mask, retokenized


def budget(lengths: tuple[int, int], max_len: int) -> tuple[int, int]:
    """Lengths to cut a pair's sides to so that they sum to at most ``max_len``: the longer side
    first, down to half the budget each (the chosen side takes an odd token)."""
    a, b = lengths
    if a + b <= max_len:
        return a, b
    half = max_len // 2
    if a <= half:
        return a, max_len - a
    if b <= half:
        return max_len - b, b
    return max_len - half, half


def _blank(completion) -> bool:
    """A blank text, an empty message list, or a blank assistant message in it."""
    if isinstance(completion, str):
        return not completion.strip()
    return not completion or any(not m["content"].strip() for m in completion)


def encode_pair(obj, tok, enc: ChatEncoder, opts):
    """One record -> ``("ok", [(ids, mask), (ids, mask)], flags)`` (chosen, rejected),
    ``("skip", reason, detail)`` (a bad record) or ``("filter", reason)``; ``flags`` holds
    ``truncated`` / ``retokenized`` when they apply."""
    try:
        pair = normalize_pair(obj)
        completions = (pair.chosen, pair.rejected)
        if any(_blank(c) for c in completions):
            return ("filter", "empty_completion")
        sides = [encode_side(pair.prompt, c, pair.conversational, tok, enc) for c in completions]
    except RecordError as e:
        return ("skip", e.reason, e.detail)
    except Exception as e:  # whatever the tokenizer library raises for this one record
        return ("skip", TOKENIZER_ERROR, f"{type(e).__name__}: {str(e)[:80]}")
    for s in sides:
        if isinstance(s, str):
            return ("filter", s)
    flags = ("retokenized",) if any(s[4] for s in sides) else ()
    out = [(s[0], s[1]) for s in sides]
    total = len(out[0][0]) + len(out[1][0])
    if opts.max_seq_length and total > opts.max_seq_length:
        if opts.overlong == "drop":
            return ("filter", "overlong")
        targets = budget((len(out[0][0]), len(out[1][0])), opts.max_seq_length)
        out = [(ids, mask) if t >= len(ids) else truncate(ids, mask, t, end, end_mask)
               for (ids, mask, end, end_mask, _), t in zip(sides, targets)]
        if any(o is None for o in out):
            return ("filter", "overlong_prompt")
        flags += ("truncated",)
    if out[0][0] == out[1][0]:
        return ("filter", "identical")
    return ("ok", out, flags)


def _log(msg: str) -> None:
    write(msg, file=sys.stderr)


def run(args, log=_log) -> Counter:
    """Runs the conversion (see the module docstring); returns the summary counters (also logged).
    Raises BadInput, TemplateError, ValueError, OSError, ImportError with one-line messages."""
    summary = convert(args, log, encode_pair, OUTPUTS, _write_ok, "pair",
                      "a preference shape (prompt, chosen and rejected)",
                      note=lambda tok: f" (message-list records); text records end with {tok.id_to_piece(tok.eod)}")
    log(f"done: {summary['docs_read']} records read, {summary['pairs_written']} pairs written, {outcome(summary)}, "
        f"{summary['truncated']} truncated; {summary['tokens']} tokens, completion tokens "
        f"{summary['chosen_completion_tokens']} chosen / {summary['rejected_completion_tokens']} rejected, "
        f"in {summary['seconds']:.1f}s"
        + (f"; {summary['retokenized']} tokenized piece by piece at turn boundaries" if summary["retokenized"] else ""))
    log(f"wrote {args.output_prefix}_{{chosen,rejected}}_{{tokens,loss_mask}}.bin/.idx")
    return summary


def _write_ok(res, builders, summary: Counter) -> None:
    for side, (ids, mask), (b_tokens, b_mask) in zip(SIDES, res[1], (builders[:2], builders[2:])):
        b_tokens.add_document(ids)
        b_mask.add_document(mask)
        summary["tokens"] += len(ids)
        summary[f"{side}_completion_tokens"] += sum(mask)


def main(argv=None) -> int:
    return cli(argv, build_parser, run)


if __name__ == "__main__":
    sys.exit(main())
