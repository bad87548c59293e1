"""Our tokenizer as Hugging Face tokenizer files that ``AutoTokenizer`` loads to our exact ids.

For a sentencepiece model (``SentencePieceTokenizer``) ``export_tokenizer`` writes:

- ``tokenizer.json``, built here with the ``tokenizers`` library from the model's pieces:
  * model: BPE whose merges are every split of every normal piece into two pieces, ranked by the
    merged piece's score (sentencepiece BPE merges the adjacent pair whose concatenation is the
    piece with the highest score; HF's BPE merges the pair of lowest rank), with the model's byte
    fallback. A unigram model becomes an HF ``Unigram`` with the same scores.
  * added tokens: the control and unknown pieces (special), and user-defined pieces of more than
    one character (not special), none normalized. A one-character user-defined piece such as our
    ``"\\n"`` is an ordinary BPE symbol, as in sentencepiece: the text then stays whole.
  * normalizer: removes U+200B / U+FEFF (``strip_invisible``, which our ``encode`` applies first),
    then the model's precompiled character map if it has one (``identity`` has none).
  * pre-tokenizer: ``Metaspace`` turning spaces into ``▁`` without splitting the text (the
    sentencepiece BPE never splits at spaces when encoding) and without a prefix ``▁``. A model
    with ``add_dummy_prefix`` (Llama's) instead gets ``▁`` for spaces and the prefix in the
    normalizer, which is exact; with multi-character user-defined pieces (which cut the text before
    the normalizer) it gets ``Metaspace(prepend_scheme="first")``, which adds no second ``▁`` when
    the text starts with a space, unlike sentencepiece.
  * decoder: ``▁`` -> space, byte pieces -> bytes, joined (the dummy prefix stripped when the
    model has one): sentencepiece's decode. No post-processor: no BOS, no EOS.
- ``tokenizer_config.json`` with ``tokenizer_class: PreTrainedTokenizerFast``: in transformers 5
  that is ``TokenizersBackend``, which loads ``tokenizer.json`` as written. ``LlamaTokenizer``
  would not: in 5.x it rebuilds its own pipeline from the vocabulary (no normalizer, ``▁``
  prepended to the text, a space stripped when decoding). For ``model_type: qwen2``
  transformers 5 ignores ``tokenizer_class`` altogether, hence the ``auto_map`` below.
- ``special_tokens_map.json`` and the sentencepiece model itself as ``tokenizer.model``.

Known differences, all outside ordinary text: special tokens typed in the text (``"</s>"``) are
matched by ``AutoTokenizer``, as HF tokenizers do, while our ``encode`` spells them out; control
ids decode to their names unless ``skip_special_tokens=True`` (sentencepiece drops them), ``<unk>``
to ``"<unk>"`` (sentencepiece: ``" ⁇ "``); an invalid UTF-8 run of byte pieces decodes to one
U+FFFD per byte (sentencepiece: fewer); in a unigram model a byte piece's name typed in the text
(``"<0x41>"``) is matched as that piece.

For an ``HFTokenizer`` (``hf:<dir>``) the original files are copied unchanged (what training
loaded), or saved with ``save_pretrained`` when there are none.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shutil

from megatron_th.convert.hf_arch import ConversionError

# Piece types of sentencepiece_model.proto (ModelProto.SentencePiece.Type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_TYPE_NAMES = {"normal": NORMAL, "unknown": UNKNOWN, "control": CONTROL, "user_defined": USER_DEFINED,
               "unused": UNUSED, "byte": BYTE}
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
SPACE = "\u2581"  # ▁, sentencepiece's whitespace symbol

# The built-in self-check text: Thai and English, newlines (single, double, leading, trailing),
# runs of spaces, a tab, digits, Thai digits, punctuation, zero-width spaces, a BOM, emoji and a
# rare character that go to byte fallback, and a literal ▁.
SAMPLE_TEXTS = (
    "ภาษาไทยเป็นภาษาราชการของประเทศไทย มีผู้พูดประมาณ 60 ล้านคน\n"
    "The quick brown fox jumps over the lazy dog.\n\n"
    "  กรุงเทพมหานคร (Bangkok) ก่อตั้งเมื่อ พ.ศ. ๒๓๒๕ / 1782  \n",
    "\nนักเรียน\u200bไป\u200bโรงเรียน\ufeffทุกวัน\t09:30 น. 🙂👍🏽 — naïve café 𝔘 \u2581x\n",
    "   leading spaces, trailing spaces   ",
    "\n\n\nthree newlines then text\n\n",
)


def piece_text(piece, kind=None) -> str | None:
    """The text a sentencepiece piece stands for: ``"▁foo"`` -> ``" foo"``, ``"\\n"`` -> ``"\\n"``.

    ``None`` for pieces that are not text: byte pieces (``"<0xE0>"``), and control, unknown or
    unused pieces when their type is known. ``piece`` is a piece string or a
    ``ModelProto.SentencePiece`` (which carries its type); ``kind`` gives the type for a string
    (a proto type number or one of ``normal user_defined control unknown unused byte``).
    """
    if hasattr(piece, "piece"):
        kind = piece.type if kind is None else kind
        piece = piece.piece
    if isinstance(kind, str):
        kind = _TYPE_NAMES[kind.lower()]
    if kind in (CONTROL, UNKNOWN, UNUSED, BYTE):
        return None
    if kind is None and _BYTE_PIECE.match(piece):
        return None
    return piece.replace(SPACE, " ")


def piece_bytes(piece: str) -> bytes | None:
    """The byte of a byte-fallback piece (``"<0xE0>"`` -> ``b"\\xe0"``), else ``None``."""
    m = _BYTE_PIECE.match(piece)
    return bytes([int(m.group(1), 16)]) if m else None


def load_model_proto(data):
    """A ``ModelProto`` from a model file path or its bytes (needs protobuf, the [hf] extra)."""
    try:
        pb = importlib.import_module("sentencepiece.sentencepiece_model_pb2")
    except ImportError as e:  # sentencepiece's generated module imports google.protobuf
        raise ImportError("reading sentencepiece model internals needs protobuf: `pip install megatron_th[hf]`") from e
    if isinstance(data, (str, os.PathLike)):
        with open(data, "rb") as f:
            data = f.read()
    m = pb.ModelProto()
    m.ParseFromString(data)
    return m


def _bpe_merges(proto) -> list[tuple[str, str]]:
    """Every (left, right) whose concatenation is a normal piece, both sides normal or user-defined
    pieces, ordered by the merged piece's score, highest first (ties: piece id, then split point)."""
    halves = {p.piece for p in proto.pieces if p.type in (NORMAL, USER_DEFINED)}
    ranked = []
    for i, p in enumerate(proto.pieces):
        if p.type != NORMAL or len(p.piece) < 2:
            continue
        s = p.piece
        for k in range(1, len(s)):
            if s[:k] in halves and s[k:] in halves:
                ranked.append((-p.score, i, k, s[:k], s[k:]))
    ranked.sort()
    return [(a, b) for *_, a, b in ranked]


def _added_pieces(proto) -> list:
    """The pieces that become HF added tokens: control and unknown pieces (special), and the
    user-defined ones, except, in a BPE model without a character map, those of one character:
    these are ordinary symbols of the BPE (sentencepiece lets them merge with their neighbours
    too), which keeps the text whole for the normalizer."""
    plain = proto.trainer_spec.model_type == 2 and not proto.normalizer_spec.precompiled_charsmap
    return [p for p in proto.pieces
            if p.type in (CONTROL, UNKNOWN) or (p.type == USER_DEFINED and not (plain and len(p.piece) == 1))]


def build_tokenizers_json(proto) -> str:
    """``tokenizer.json`` text for a sentencepiece ``ModelProto`` (see the module docstring)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE, Unigram

    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if norm.remove_extra_whitespaces:
        raise ConversionError("tokenizer: a sentencepiece model with remove_extra_whitespaces=true cannot be "
                              "exported exactly (HF normalizers work per segment between added tokens)")
    if not norm.escape_whitespaces:
        raise ConversionError("tokenizer: a sentencepiece model with escape_whitespaces=false is not supported")
    pieces = list(proto.pieces)
    unk = next((i for i, p in enumerate(pieces) if p.type == UNKNOWN), None)
    unk_piece = pieces[unk].piece if unk is not None else None
    model_type = spec.model_type  # 1 unigram, 2 bpe
    if model_type == 2:
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        model = BPE(vocab=vocab, merges=_bpe_merges(proto), unk_token=unk_piece, fuse_unk=True,
                    byte_fallback=bool(spec.byte_fallback))
    elif model_type == 1:
        vocab = [(p.piece, float(p.score) if p.type in (NORMAL, USER_DEFINED) else 0.0) for p in pieces]
        model = Unigram(vocab, unk_id=unk, byte_fallback=bool(spec.byte_fallback))
    else:
        raise ConversionError(f"tokenizer: sentencepiece model type {model_type} cannot be exported "
                              "(only BPE and unigram)")
    tok = Tokenizer(model)
    added = _added_pieces(proto)
    steps = [normalizers.Replace(Regex("[\u200b\ufeff]"), "")]
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    prefix = bool(norm.add_dummy_prefix)
    if prefix and not any(p.type == USER_DEFINED for p in added):
        # The dummy prefix as a normalizer: exact (also for text that starts with a space or a
        # zero-width space), as the text reaches the normalizer whole when no added token cuts it
        # (control pieces typed in the text aside).
        steps += [normalizers.Replace(" ", SPACE), normalizers.Prepend(SPACE)]
        tok.pre_tokenizer = None
    else:
        # With user-defined added tokens the normalizer sees each segment between them, and only
        # Metaspace's "first" prefixes the start of the text alone (but adds no second ▁ when the
        # text starts with a space, unlike sentencepiece).
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first" if prefix else "never",
                                                     split=False)
    tok.normalizer = normalizers.Sequence(steps)
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    if added:
        # already in the vocabulary: they keep their ids
        tok.add_tokens([AddedToken(p.piece, special=p.type != USER_DEFINED, normalized=False) for p in added])
    ids = {p.piece: i for i, p in enumerate(pieces)}
    for p in added:
        if tok.token_to_id(p.piece) != ids[p.piece]:
            raise ConversionError(f"tokenizer: added token {p.piece!r} did not keep its id")
    return tok.to_str(pretty=True)


def _token(content: str | None, special: bool = True):
    if content is None:
        return None
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": special}


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


# model_types for which AutoTokenizer in transformers 5 loads the tokenizer class it associates
# with the model type whatever tokenizer_config.json says (qwen2 -> a byte-level Qwen2Tokenizer
# rebuilt from our vocabulary). An ``auto_map`` naming a trivial subclass of
# PreTrainedTokenizerFast, shipped next to the files, makes it load tokenizer.json as written.
_FORCED_CLASS_TYPES = {"qwen2"}
REMOTE_MODULE = "tokenization_megatron_th"
REMOTE_CLASS = "MegatronThTokenizer"
_REMOTE_CODE = (
    '"""Written by megatron_th\'s exporter: the tokenizer is tokenizer.json, loaded exactly as written.\n\n'
    "This subclass only exists so that AutoTokenizer uses it rather than the tokenizer class that\n"
    "transformers associates with this model type (see ``auto_map`` in tokenizer_config.json).\n"
    '"""\n'
    "from transformers import PreTrainedTokenizerFast\n\n\n"
    f"class {REMOTE_CLASS}(PreTrainedTokenizerFast):\n"
    "    pass\n"
)


def autotokenizer_forces_class(model_type: str | None) -> bool:
    """Whether AutoTokenizer ignores ``tokenizer_class`` for this ``model_type`` (transformers 5)."""
    if not model_type:
        return False
    if model_type in _FORCED_CLASS_TYPES:
        return True
    try:
        from transformers.models.auto import tokenization_auto as ta
    except Exception:  # transformers missing or reorganised: the static list only
        return False
    forced = getattr(ta, "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS", ())
    names = getattr(ta, "TOKENIZER_MAPPING_NAMES", {})
    return model_type in forced and (names.get(model_type) or "TokenizersBackend").removesuffix("Fast") not in (
        "TokenizersBackend", "PreTrainedTokenizer", "PythonBackend")


def _model_type(out_dir: str) -> str | None:
    try:
        with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def export_sentencepiece(model_bytes: bytes, out_dir: str, model_max_length: int | None = None,
                         model_type: str | None = None) -> list[str]:
    """Write the HF files for a sentencepiece model; returns their names."""
    proto = load_model_proto(model_bytes)
    spec = proto.trainer_spec
    pieces = list(proto.pieces)

    def special(i: int) -> str | None:
        return pieces[i].piece if 0 <= i < len(pieces) and pieces[i].type in (CONTROL, UNKNOWN) else None

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(build_tokenizers_json(proto))
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
        f.write(model_bytes)
    files = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"]
    names = {"bos_token": special(spec.bos_id), "eos_token": special(spec.eos_id),
             "unk_token": special(spec.unk_id), "pad_token": special(spec.pad_id)}
    added = {p.piece for p in _added_pieces(proto)}
    decoder = {str(i): _token(p.piece, special=p.type != USER_DEFINED)
               for i, p in enumerate(pieces) if p.piece in added}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": decoder,
        **{k: v for k, v in names.items() if v is not None},
        "model_max_length": int(model_max_length) if model_max_length else int(1e30),
    }
    if autotokenizer_forces_class(model_type or _model_type(out_dir)):
        files.append(_add_auto_map(out_dir, config))
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), config)
    _write_json(os.path.join(out_dir, "special_tokens_map.json"),
                {k: _token(v) for k, v in names.items() if v is not None})
    return files


# The files of a Hugging Face tokenizer directory, copied as they are for an hf:<dir> tokenizer.
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                      "vocab.json", "merges.txt", "added_tokens.json", "vocab.txt", "chat_template.jinja",
                      "chat_template.json")


def _add_auto_map(out_dir: str, config: dict) -> str:
    config["auto_map"] = {"AutoTokenizer": [None, f"{REMOTE_MODULE}.{REMOTE_CLASS}"]}
    with open(os.path.join(out_dir, REMOTE_MODULE + ".py"), "w", encoding="utf-8") as f:
        f.write(_REMOTE_CODE)
    return REMOTE_MODULE + ".py"


def _export_hf(tokenizer, out_dir: str, model_max_length: int | None, model_type: str | None) -> list[str]:
    """An hf:<dir> tokenizer: its files copied unchanged (what training loaded), else
    ``save_pretrained``. When training loaded them as a generic PreTrainedTokenizerFast but the
    model type makes transformers 5 force another class, the ``auto_map`` keeps the loaded one."""
    os.makedirs(out_dir, exist_ok=True)
    src = tokenizer.model_path
    names = [n for n in HF_TOKENIZER_FILES if os.path.isdir(src) and os.path.isfile(os.path.join(src, n))]
    if names:
        for n in names:
            shutil.copyfile(os.path.join(src, n), os.path.join(out_dir, n))
    else:
        saved = tokenizer.tok.save_pretrained(out_dir)
        names = sorted({os.path.relpath(str(p), out_dir) for p in saved if os.path.isfile(str(p))})
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    if not os.path.isfile(cfg_path):
        return names
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    changed = False
    current = cfg.get("model_max_length")
    if model_max_length and (not isinstance(current, (int, float)) or current > int(model_max_length)):
        cfg["model_max_length"] = int(model_max_length)
        changed = True
    generic = type(tokenizer.tok).__name__ in ("TokenizersBackend", "PreTrainedTokenizerFast")
    if generic and "auto_map" not in cfg and autotokenizer_forces_class(model_type or _model_type(out_dir)):
        names.append(_add_auto_map(out_dir, cfg))
        changed = True
    if changed:
        _write_json(cfg_path, cfg)
    return names


def export_tokenizer(tokenizer, out_dir: str, model_max_length: int | None = None,
                     model_type: str | None = None) -> list[str]:
    """Write ``tokenizer`` (ours: sentencepiece, or ``hf:<dir>``) into ``out_dir`` as HF files.

    ``model_type`` is the HF model type the files go with (default: ``out_dir/config.json``'s);
    it only matters for the types whose tokenizer class transformers 5 forces (see
    ``autotokenizer_forces_class``). Returns the file names written, relative to ``out_dir``."""
    from megatron_th.data.tokenizer import HFTokenizer

    if isinstance(tokenizer, HFTokenizer):
        return _export_hf(tokenizer, out_dir, model_max_length, model_type)
    if hasattr(tokenizer, "model_bytes"):  # SentencePieceTokenizer
        return export_sentencepiece(tokenizer.model_bytes, out_dir, model_max_length, model_type)
    raise ConversionError(f"tokenizer {type(tokenizer).__name__}: cannot be exported to Hugging Face files")


def load_hf(hf_dir: str, **kwargs):
    """``AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)``."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise ImportError("Hugging Face tokenizers need `pip install megatron_th[hf]`") from e
    return AutoTokenizer.from_pretrained(hf_dir, local_files_only=True, **kwargs)


def _show(ids, to_pieces, at: int) -> str:
    window = list(ids[max(0, at - 2):at + 3])
    return f"{window} {to_pieces(window)}"


def import_check(tokenizer, hf_dir: str, texts=SAMPLE_TEXTS, hf=None) -> int:
    """Check that ``AutoTokenizer.from_pretrained(hf_dir)`` has our special ids, encodes ``texts``
    to our ids and decodes those ids to our decode. For a sentencepiece tokenizer the default call
    ``tok(text)`` must match too (no BOS added); an hf:<dir> tokenizer is compared without special
    tokens (as our ``encode`` calls it). Raises ``ConversionError`` naming the first difference;
    returns the number of tokens checked."""
    from megatron_th.data.tokenizer import HFTokenizer

    hf = hf if hf is not None else load_hf(hf_dir)
    where = f"{hf_dir}: AutoTokenizer ({type(hf).__name__})"
    for name, ours in (("eos", tokenizer.eod), ("bos", tokenizer.bos), ("unk", tokenizer.unk), ("pad", tokenizer.pad)):
        theirs = getattr(hf, f"{name}_token_id")
        if ours is not None and ours >= 0 and theirs != ours:
            raise ConversionError(f"{where}: {name}_token_id is {theirs}, ours is {ours}")
    ours_pieces = lambda ids: [tokenizer.id_to_piece(i) for i in ids]  # noqa: E731
    checked = 0
    for text in texts:
        ours = list(tokenizer.encode(text))
        calls = [("tok.encode(text, add_special_tokens=False)", hf.encode(text, add_special_tokens=False))]
        if not isinstance(tokenizer, HFTokenizer):
            calls += [("tok(text)['input_ids']", hf(text)["input_ids"]), ("tok.encode(text)", hf.encode(text))]
        for how, got in calls:
            got = list(got)
            if got != ours:
                at = next((i for i, (a, b) in enumerate(zip(ours, got)) if a != b), min(len(ours), len(got)))
                raise ConversionError(
                    f"{where}: {how} differs from our encode at token {at} of {text[:50]!r}: "
                    f"ours {_show(ours, ours_pieces, at)}, theirs {_show(got, hf.convert_ids_to_tokens, at)}")
        back, ours_back = hf.decode(ours), tokenizer.decode(ours)
        if back != ours_back:
            raise ConversionError(f"{where}: decode gives {back[:60]!r}, ours {ours_back[:60]!r}")
        checked += len(ours)
    return checked
