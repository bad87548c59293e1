"""Chat templates: render a conversation to token ids and mark the assistant tokens (the loss mask).

Which template (``resolve_template``): ``--chat-template`` when given (a built-in name from
``BUILTIN`` or a Jinja file), else the tokenizer's own Hugging Face ``chat_template`` (``hf:<dir>``
tokenizers that have one), else the built-in ``chatml``. Built-ins are the standard ChatML and
Llama-3 layouts as Jinja strings. Their end-of-turn marker (``<|im_end|>``, ``<|eot_id|>``) is kept
when the tokenizer has it as one token; otherwise it is replaced by the tokenizer's EOS, as
ChatML models do (Qwen2's EOS *is* ``<|im_end|>``): so the sentencepiece tokenizer of this project
(megatron_th/assets/tokenizer/th_en.model, which has no chat tokens) ends every turn with ``</s>``
(id 2) and generation stops at EOD as after pretraining, while the other markers
(``<|im_start|>``, Llama-3's headers) stay plain text, a few tokens each. ``{{ bos_token }}`` /
``{{ eos_token }}`` in a template are the tokenizer's BOS / EOS; for a sentencepiece tokenizer the
rendered text is split at those two strings, which become their ids (sentencepiece would otherwise
read them as text), so a literal ``</s>`` in a message also becomes EOS, as a Hugging Face
tokenizer without ``sanitize_control_tokens`` does.

The mask (``ChatEncoder.encode``): 1 on each assistant turn's content and the end-of-turn tokens
the template writes after it; 0 on system / user / tool turns and on role headers, including the
assistant's own header (the generation prompt).

* A template with ``{% generation %}`` and a Hugging Face tokenizer: exactly transformers'
  ``apply_chat_template(..., return_dict=True, return_assistant_tokens_mask=True)`` ids and
  ``assistant_masks`` (tokens overlapping a generation block). For a sentencepiece tokenizer the
  block is rendered as its plain body and the prefix method below applies.
* Otherwise, the prefix method (what chat-template training code in TRL / LLaMA-Factory does): for
  the assistant turn i, ``render(messages[:i], add_generation_prompt=True)`` ends where the turn's
  trained text starts and ``render(messages[:i+1])`` ends where it stops; both must be prefixes of
  ``render(messages)`` (a record where they are not is refused as ``template_not_incremental``:
  such a template should mark its assistant text with ``{% generation %}``). The token ids are
  those of the whole rendered text when tokenizing the text up to each boundary gives a prefix of
  them (the usual case: the ids then equal ``apply_chat_template(messages)``'s); when a token
  straddles a boundary (a merge across it), the text is instead tokenized piece by piece at the
  boundaries, so that every token belongs to one side (``Encoded.retokenized``, counted). A piece
  after the first is tokenized after a newline that is then removed, so a tokenizer that adds a
  prefix space at the start of a string does not add one mid-chat (transformers'
  ``_encode_chat_piece`` does the same).
"""
from __future__ import annotations

import os
import re
from typing import NamedTuple

from megatron_th.data.sft_records import RecordError
from megatron_th.data.tokenizer import HFTokenizer

TEMPLATE_ERROR = "template_error"
NOT_INCREMENTAL = "template_not_incremental"

CHATML = """{%- for message in messages %}
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Meta's Llama 3 layout without tools or dates (content trimmed, as Meta's template does)
LLAMA3 = """{{- bos_token }}
{%- for message in messages %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

BUILTIN = {"chatml": CHATML, "llama3": LLAMA3}
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
_PROBE = [{"role": "user", "content": "probe question"}, {"role": "assistant", "content": "probe answer"}]


class TemplateError(ValueError):
    """An unusable ``--chat-template`` (unknown name, unreadable file, a template that does not
    render a plain two-turn conversation); the message names the flag."""


def has_generation(source: str) -> bool:
    """Whether the template marks assistant text with ``{% generation %}``."""
    return bool(_GENERATION.search(source))


def resolve_template(spec: str | None, tok) -> tuple[str, str]:
    """``(description, Jinja source)`` of the template to use (see the module docstring).

    ``spec``: ``--chat-template`` (None, a name in ``BUILTIN`` or a file path); ``tok``: a
    tokenizer from megatron_th.data.tokenizer. Raises TemplateError."""
    if spec is None:
        own = getattr(getattr(tok, "tok", None), "chat_template", None)
        if isinstance(own, dict):  # named templates: the default one
            own = own.get("default")
        if own:
            return "the tokenizer's chat_template", own
        spec = "chatml"
    if spec in BUILTIN:
        source, marker = BUILTIN[spec], END_OF_TURN[spec]
        if len(_control_split_encode(tok, _control_tokens(tok), marker)) != 1:
            eos = tok.id_to_piece(tok.eod)
            return f"built-in {spec} ({marker} -> {eos})", source.replace(marker, eos)
        return f"built-in {spec}", source
    if not os.path.isfile(spec):
        raise TemplateError(f"--chat-template {spec}: neither a built-in ({', '.join(BUILTIN)}) nor a file")
    try:
        with open(spec, encoding="utf-8") as f:
            return spec, f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise TemplateError(f"--chat-template {spec}: cannot read ({e})") from None


def _control_tokens(tok) -> dict[str, int]:
    """Strings the rendered text is split at, with their ids: BOS and EOS for a sentencepiece
    tokenizer; none for a Hugging Face one (its tokenizer matches its special tokens itself)."""
    if isinstance(tok, HFTokenizer):
        return {}
    return {tok.id_to_piece(i): i for i in (tok.bos, tok.eod) if i is not None and i >= 0}


def _control_split_encode(tok, control: dict, text: str) -> list[int]:
    if not control:
        return tok.encode(text)
    pattern = "(" + "|".join(re.escape(s) for s in sorted(control, key=len, reverse=True)) + ")"
    ids: list[int] = []
    for j, part in enumerate(re.split(pattern, text)):
        ids += [control[part]] if j % 2 else (tok.encode(part) if part else [])
    return ids


def _compile(source: str):
    """The template compiled like transformers' (sandboxed, ``trim_blocks``, ``lstrip_blocks``,
    ``loopcontrols``, ``raise_exception``, a non-escaping ``tojson``); ``{% generation %}`` blocks
    render as their body. Used for tokenizers without transformers (sentencepiece)."""
    import json

    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


class Encoded(NamedTuple):
    ids: list[int]
    mask: list[int]          # 1 = assistant token to train on (same length as ids)
    retokenized: bool        # tokenized piece by piece at turn boundaries (see the module docstring)


class ChatEncoder:
    """Renders and tokenizes conversations with one template.

    ``tok``: a tokenizer from megatron_th.data.tokenizer (anything with ``encode``, ``bos``,
    ``eod``, ``pad``, ``unk`` and ``id_to_piece`` is rendered with our Jinja environment;
    ``HFTokenizer`` through transformers' ``apply_chat_template``). ``source``: the Jinja template. The constructor renders
    a probe conversation and raises TemplateError (naming ``name``) when that fails; it also finds
    ``end_of_turn`` / ``end_of_turn_mask``, the tokens (and their mask values) the template writes
    after an assistant turn's content (empty when they cannot be isolated), which truncation keeps.
    """

    def __init__(self, tok, source: str, name: str = "--chat-template"):
        self.tok, self.source = tok, source
        self.hf = isinstance(tok, HFTokenizer)
        self.generation = self.hf and has_generation(source)
        self._control = _control_tokens(tok)
        self._specials = {f"{k}_token": tok.id_to_piece(i) for k, i in
                          (("bos", tok.bos), ("eos", tok.eod), ("pad", tok.pad), ("unk", tok.unk))
                          if i is not None and i >= 0}
        try:
            self._template = None if self.hf else _compile(source)
            text = self.render(_PROBE)
            probe = self.encode(_PROBE)
        except Exception as e:  # whatever a user's template or jinja raises (RecordError included)
            raise TemplateError(f"{name}: the template cannot render a user/assistant conversation "
                                f"({str(e)[:200]})") from None
        at = text.rfind(_PROBE[1]["content"])
        if at < 0:
            raise TemplateError(f"{name}: the template does not write the assistant's content")
        eot = self.encode_piece(text[at + len(_PROBE[1]["content"]):])
        ok = bool(eot) and probe.ids[-len(eot):] == eot
        self.end_of_turn = eot if ok else []
        self.end_of_turn_mask = probe.mask[-len(eot):] if ok else []

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The template's text for ``messages``; raises RecordError(TEMPLATE_ERROR) when the
        template raises (e.g. its ``raise_exception`` on an unsupported role order)."""
        try:
            if self.hf:
                return self.tok.tok.apply_chat_template(messages, chat_template=self.source, tokenize=False,
                                                        add_generation_prompt=add_generation_prompt)
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **self._specials)
        except Exception as e:  # a template is user code: anything it raises is this record's error
            raise RecordError(TEMPLATE_ERROR, f"{type(e).__name__}: {str(e)[:120]}") from None

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a whole rendered text (as ``apply_chat_template(tokenize=True)`` does:
        no special tokens added; BOS/EOS strings become their ids for sentencepiece)."""
        return _control_split_encode(self.tok, self._control, text)

    def encode_piece(self, text: str) -> list[int]:
        """Token ids of text from the middle of a chat (after a newline that is removed)."""
        nl = self.encode_text("\n")
        ids = self.encode_text("\n" + text)
        return ids[len(nl):] if ids[:len(nl)] == nl else self.encode_text(text)

    def encode(self, messages: list[dict]) -> Encoded:
        """Token ids and assistant mask of one conversation (normalised by sft_records).
        Raises RecordError (TEMPLATE_ERROR, NOT_INCREMENTAL)."""
        if self.generation:
            try:
                out = self.tok.tok.apply_chat_template(messages, chat_template=self.source, tokenize=True,
                                                       return_dict=True, return_assistant_tokens_mask=True)
            except Exception as e:
                raise RecordError(TEMPLATE_ERROR, f"{type(e).__name__}: {str(e)[:120]}") from None
            return Encoded(list(out["input_ids"]), list(out["assistant_masks"]), False)
        full, spans = self._assistant_spans(messages)
        ids = self.encode_text(full)
        cuts = sorted({b for span in spans for b in span})
        at = {}
        for b in cuts:
            pre = self.encode_text(full[:b])
            if ids[:len(pre)] != pre:
                break
            at[b] = len(pre)
        else:
            mask = [0] * len(ids)
            for s, e in spans:
                mask[at[s]:at[e]] = [1] * (at[e] - at[s])
            return Encoded(ids, mask, False)
        starts = {s for s, _ in spans}
        bounds = [0] + cuts + [len(full)]
        ids, mask = [], []
        for a, b in zip(bounds, bounds[1:]):
            if a < b:
                piece = self.encode_piece(full[a:b]) if a else self.encode_text(full[:b])
                ids += piece
                mask += [int(a in starts)] * len(piece)
        return Encoded(ids, mask, True)

    def _assistant_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and each assistant turn's trained span in it (character offsets)."""
        full = self.render(messages)
        spans: list[tuple[int, int]] = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            head = self.render(messages[:i], add_generation_prompt=True)
            upto = self.render(messages[:i + 1])
            if not (full.startswith(upto) and upto.startswith(head)) or (spans and len(head) < spans[-1][1]):
                raise RecordError(NOT_INCREMENTAL, f"turn {i + 1}: rendering the turns up to it is not a prefix "
                                                   f"of rendering the whole conversation")
            spans.append((len(head), len(upto)))
        return full, spans
