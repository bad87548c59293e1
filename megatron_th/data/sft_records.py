"""Chat / instruction records -> one normalised conversation: a list of ``{"role", "content"}``.

The shapes read (the first whose key a record has decides; every shape may carry a top-level
``system`` string, which becomes a leading system message):

=====================  ========================================================================
``messages``           ``[{"role": ..., "content": ...}, ...]``, multi-turn, roles ``system``,
                       ``user``, ``assistant``, ``tool`` (the OpenAI / HF chat format; TRL's
                       "conversational language modeling")
``conversations``      ShareGPT: ``[{"from": ..., "value": ...}, ...]``; ``from`` is one of
                       ``SHAREGPT_ROLES`` (``human``/``gpt``/``system`` and their aliases)
``prompt`` +           TRL's prompt-completion: both strings (a user turn and an assistant turn),
``completion``         or both message lists (the prompt's messages, then the completion's)
``instruction`` +      Alpaca: the user turn is ``instruction``, followed by a blank line and
``output``             ``input`` when ``input`` is a non-empty string; the assistant turn is ``output``
=====================  ========================================================================

Only ``role`` and ``content`` survive normalisation (other message keys such as ``name`` or
``tool_calls`` are dropped); content must be a string (multimodal content lists are refused).
A record that cannot become a conversation raises ``RecordError`` with one of ``REASONS``, which
the driver counts and reports as ``file:line`` (megatron_th/data/preprocess_sft.py).
"""
from __future__ import annotations

import re

from megatron_th.data.readers import LONE_SURROGATE

UNKNOWN_SHAPE = "unknown_shape"          # none of the keys above
WRONG_SHAPE = "wrong_shape"              # a shape's key, but not the structure that shape needs
UNKNOWN_ROLE = "unknown_role"
NON_STRING_CONTENT = "non_string_content"
NO_ASSISTANT_TURN = "no_assistant_turn"
REASONS = (UNKNOWN_SHAPE, WRONG_SHAPE, UNKNOWN_ROLE, NON_STRING_CONTENT, NO_ASSISTANT_TURN, LONE_SURROGATE)

ROLES = ("system", "user", "assistant", "tool")
# ShareGPT speaker names (as FastChat, axolotl and LLaMA-Factory read them) -> chat roles
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "tool": "tool", "function": "tool", "observation": "tool"}

_SURROGATE = re.compile("[\ud800-\udfff]")


class RecordError(ValueError):
    """A record that is not a conversation: ``reason`` (one of ``REASONS``) and a short ``detail``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(NON_STRING_CONTENT, f"{what} is {type(value).__name__}")
    if (m := _SURROGATE.search(value)) is not None:
        raise RecordError(LONE_SURROGATE, f"{what}: U+{ord(m.group()):04X} at character {m.start()}")
    return value


def _turns(items, key: str, role_key: str, content_key: str, names: dict) -> list[dict]:
    if not isinstance(items, list):
        raise RecordError(WRONG_SHAPE, f"{key} is {type(items).__name__}, not a list")
    out = []
    for i, m in enumerate(items, 1):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise RecordError(WRONG_SHAPE, f"{where} is {type(m).__name__}, not an object")
        for k in (role_key, content_key):
            if k not in m:
                raise RecordError(WRONG_SHAPE, f"{where} has no {k!r}")
        role = m[role_key]
        if not isinstance(role, str) or role not in names:
            raise RecordError(UNKNOWN_ROLE, f"{where}.{role_key} = {str(role)[:40]!r}")
        out.append({"role": names[role], "content": _text(m[content_key], f"{where}.{content_key}")})
    return out


_MESSAGE_ROLES = {r: r for r in ROLES}


def _shape(obj: dict) -> list[dict]:
    if "messages" in obj:
        return _turns(obj["messages"], "messages", "role", "content", _MESSAGE_ROLES)
    if "conversations" in obj:
        return _turns(obj["conversations"], "conversations", "from", "value", SHAREGPT_ROLES)
    if "prompt" in obj or "completion" in obj:
        if "prompt" not in obj or "completion" not in obj:
            raise RecordError(WRONG_SHAPE, "'prompt' and 'completion' must come together")
        prompt, completion = obj["prompt"], obj["completion"]
        if isinstance(prompt, list) or isinstance(completion, list):
            return (_turns(prompt, "prompt", "role", "content", _MESSAGE_ROLES)
                    + _turns(completion, "completion", "role", "content", _MESSAGE_ROLES))
        return [{"role": "user", "content": _text(prompt, "prompt")},
                {"role": "assistant", "content": _text(completion, "completion")}]
    if "instruction" in obj or "output" in obj:
        if "instruction" not in obj or "output" not in obj:
            raise RecordError(WRONG_SHAPE, "'instruction' and 'output' must come together")
        user = _text(obj["instruction"], "instruction")
        extra = obj.get("input")
        if extra is not None and _text(extra, "input").strip():
            user = f"{user}\n\n{extra}"
        return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(obj["output"], "output")}]
    keys = ", ".join(list(obj)[:6]) or "none"
    raise RecordError(UNKNOWN_SHAPE, f"keys: {keys}; expected messages, conversations, prompt/completion "
                                     f"or instruction/output")


def normalize_record(obj) -> list[dict]:
    """One record (a decoded JSON object or parquet row) -> its conversation.

    Returns a list of ``{"role": str, "content": str}`` (roles from ``ROLES``), with at most one
    system message, first; at least one user or tool turn comes before the first assistant turn.
    Raises ``RecordError`` (see ``REASONS``); empty assistant turns are *not* an error here (the
    driver filters and counts them)."""
    if not isinstance(obj, dict):
        raise RecordError(WRONG_SHAPE, f"{type(obj).__name__}, not an object")
    messages = _shape(obj)
    if obj.get("system") is not None:
        system = _text(obj["system"], "system")
        if messages and messages[0]["role"] == "system":
            raise RecordError(WRONG_SHAPE, "a top-level 'system' and a leading system message")
        messages.insert(0, {"role": "system", "content": system})
    if not messages:
        raise RecordError(WRONG_SHAPE, "no messages")
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        raise RecordError(WRONG_SHAPE, f"system message at turn {roles.index('system', 1) + 1}, not first")
    if "assistant" not in roles:
        raise RecordError(NO_ASSISTANT_TURN, f"roles: {', '.join(roles)}")
    first = roles.index("assistant")
    if not any(r in ("user", "tool") for r in roles[:first]):
        raise RecordError(WRONG_SHAPE, f"turn {first + 1} (assistant) comes before any user turn")
    return messages


def assistant_texts(messages: list[dict]) -> list[str]:
    """The content of every assistant turn, in order."""
    return [m["content"] for m in messages if m["role"] == "assistant"]


def message_list(items, key: str) -> list[dict]:
    """``items`` read as a list of ``{"role", "content"}`` messages (the ``messages`` shape), each
    normalised to those two keys; ``key`` names the list in errors. Raises RecordError
    (WRONG_SHAPE, UNKNOWN_ROLE, NON_STRING_CONTENT, LONE_SURROGATE)."""
    return _turns(items, key, "role", "content", _MESSAGE_ROLES)


def text_value(value, what: str) -> str:
    """``value`` when it is a string of Unicode text; raises RecordError (NON_STRING_CONTENT,
    LONE_SURROGATE) naming ``what``."""
    return _text(value, what)
