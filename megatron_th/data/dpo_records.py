"""Preference records -> one normalised pair: a prompt and two completions, chosen and rejected.

The shapes read (TRL's preference dataset formats):

==========================  ===================================================================
standard (text)             ``{"prompt": str, "chosen": str, "rejected": str}``: raw text, no
                            chat template (the driver tokenizes the prompt and each completion
                            apart and ends each completion with EOS)
conversational              ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``
                            with ``{"role", "content"}`` messages; the prompt is the conversation
                            before the answer (it may carry earlier assistant turns; a top-level
                            ``system`` string becomes its leading system message), each completion
                            one or more assistant messages
conversational, implicit    ``{"chosen": [messages], "rejected": [messages]}``, each the whole
prompt                      conversation: the prompt is their longest common leading run of
                            messages (TRL's ``extract_prompt``)
==========================  ===================================================================

The three values must all be strings or all message lists. Messages keep ``role`` and
``content`` only (megatron_th/data/sft_records.py reads them). A record that is not a pair raises
``RecordError`` with a reason from sft_records ``REASONS``, counted by the driver
(megatron_th/data/preprocess_dpo.py) and reported as ``file:line``. Empty completions and
``chosen == rejected`` are not errors here: the driver filters and counts them.
"""
from __future__ import annotations

from typing import NamedTuple

from megatron_th.data.sft_records import (NON_STRING_CONTENT, UNKNOWN_SHAPE, WRONG_SHAPE, RecordError,
                                          message_list, normalize_record, text_value)

SIDES = ("chosen", "rejected")  # as in megatron_th/data/dpo_dataset.py


class Pair(NamedTuple):
    """A preference pair: ``prompt`` and the two completions, all ``str`` (``conversational`` is
    False) or all lists of ``{"role", "content"}`` messages (True)."""
    prompt: str | list
    chosen: str | list
    rejected: str | list
    conversational: bool


def _kind(value) -> str:
    return "a message list" if isinstance(value, list) else "a string" if isinstance(value, str) else \
        type(value).__name__


def _implicit_prompt(chosen: list, rejected: list) -> tuple[list, list, list]:
    """Split two whole conversations at their first differing message (TRL's ``extract_prompt``);
    identical conversations are split before their trailing assistant messages."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if chosen == rejected:
        while n and chosen[n - 1]["role"] == "assistant":
            n -= 1
    if not n:
        raise RecordError(WRONG_SHAPE, "no 'prompt', and chosen and rejected share no leading message")
    return chosen[:n], chosen[n:], rejected[n:]


def normalize_pair(obj) -> Pair:
    """One record (a decoded JSON object or parquet row) -> its ``Pair``.

    For message lists the prompt is validated as a conversation (at most one system message, first;
    a user or tool turn before any assistant turn) and every completion message must be an
    assistant turn. Raises ``RecordError`` (UNKNOWN_SHAPE: no ``chosen`` / ``rejected``;
    WRONG_SHAPE: a missing part, mixed strings and lists, a misplaced system message or a
    non-assistant completion turn; and sft_records' message errors, named ``prompt[i]``,
    ``chosen[i]``, ``rejected[i]``)."""
    if not isinstance(obj, dict):
        raise RecordError(WRONG_SHAPE, f"{type(obj).__name__}, not an object")
    if "chosen" not in obj and "rejected" not in obj:
        keys = ", ".join(list(obj)[:6]) or "none"
        raise RecordError(UNKNOWN_SHAPE, f"keys: {keys}; expected prompt, chosen and rejected")
    for k in ("chosen", "rejected"):
        if k not in obj:
            raise RecordError(WRONG_SHAPE, f"{'rejected' if k == 'chosen' else 'chosen'} without {k!r}")
    values = {k: obj[k] for k in ("prompt", "chosen", "rejected") if k in obj}
    kinds = {k: _kind(v) for k, v in values.items()}
    if set(kinds.values()) == {"a string"}:
        if "prompt" not in obj:
            raise RecordError(WRONG_SHAPE, "no 'prompt' (an implicit prompt needs message lists)")
        if obj.get("system") is not None:
            raise RecordError(WRONG_SHAPE, "a top-level 'system' needs message lists (text records use no template)")
        return Pair(*(text_value(values[k], k) for k in ("prompt", "chosen", "rejected")), False)
    if set(kinds.values()) != {"a message list"}:
        reason = WRONG_SHAPE if set(kinds.values()) <= {"a string", "a message list"} else NON_STRING_CONTENT
        raise RecordError(reason, "prompt, chosen and rejected must be all strings or all message lists ("
                          + ", ".join(f"{k} is {v}" for k, v in kinds.items()) + ")")
    msgs = {k: message_list(v, k) for k, v in values.items()}
    if "prompt" in msgs:
        prompt, chosen, rejected = msgs["prompt"], msgs["chosen"], msgs["rejected"]
    else:
        prompt, chosen, rejected = _implicit_prompt(msgs["chosen"], msgs["rejected"])
    for side, turns in (("chosen", chosen), ("rejected", rejected)):
        for i, m in enumerate(turns, 1):
            if m["role"] != "assistant":
                raise RecordError(WRONG_SHAPE, f"{side}[{i}] is a {m['role']} turn; a completion holds "
                                               f"assistant messages")
    # the prompt as a conversation: sft_records' rules, with a stand-in answer after it
    record = {"messages": prompt + [{"role": "assistant", "content": ""}]}
    if obj.get("system") is not None:
        record["system"] = obj["system"]
    return Pair(normalize_record(record)[:-1], chosen, rejected, True)
