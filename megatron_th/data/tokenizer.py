"""Tokenizers behind one small interface, and the vocabulary padding rule.

The default is a sentencepiece model trained by ``tools/train_tokenizer.py``; its special ids are
fixed: ``<unk>`` 0, ``<s>`` (BOS) 1, ``</s>`` (EOS) 2, ``<pad>`` 3, and EOS is the end-of-document
(EOD) token appended by ``tools/preprocess_data.py``. Hugging Face tokenizers are accepted too
(``hf:<dir>``), for continued pretraining of an existing model.
"""
from __future__ import annotations

import os
import re
from functools import cached_property

import numpy as np

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3

# Characters removed before training and before encoding: zero-width space and the BOM /
# zero-width no-break space. They are invisible, common in scraped Thai, and carry no meaning.
_INVISIBLE = re.compile("[\u200b\ufeff]")


def strip_invisible(text: str) -> str:
    # two substring tests are ~20x cheaper than the regex on text that has neither (nearly all)
    return _INVISIBLE.sub("", text) if "\u200b" in text or "\ufeff" in text else text


def padded_vocab_size(vocab_size: int, divisible_by: int = 128) -> int:
    """Round up to a multiple of ``divisible_by`` -- NOT multiplied by TP (unlike Megatron), so
    shapes, initial weights and checkpoints never depend on the parallel layout."""
    if divisible_by <= 0:
        raise ValueError(f"--make-vocab-size-divisible-by must be positive, got {divisible_by}")
    return -(-vocab_size // divisible_by) * divisible_by


def model_vocab_size(model_cfg, tokenizer) -> int:
    """Rows of the model's vocabulary that have logits: ``--vocab-size`` when set (a base model with
    more embedding rows than its tokenizer has tokens, e.g. Qwen2.5's 151936 for ~151.6k tokens),
    else the tokenizer's size. Raises ConfigError when the tokenizer has more tokens than that."""
    from megatron_th.config import ConfigError

    rows = getattr(model_cfg, "vocab_size", None)
    if rows is None:
        return tokenizer.vocab_size
    if tokenizer.vocab_size > rows:
        raise ConfigError(f"--vocab-size {rows} is smaller than the tokenizer's {tokenizer.vocab_size} tokens")
    return rows


class SentencePieceTokenizer:
    """A sentencepiece model file; ``encode`` adds nothing (no BOS, no dummy prefix)."""

    def __init__(self, model_path: str | os.PathLike):
        import sentencepiece as spm

        self.model_path = str(model_path)
        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(f"{self.model_path}: tokenizer model not found")
        self.sp = spm.SentencePieceProcessor(model_file=self.model_path)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def eod(self) -> int:
        return self.sp.eos_id()

    @property
    def bos(self) -> int:
        return self.sp.bos_id()

    @property
    def pad(self) -> int:
        return self.sp.pad_id()

    @property
    def unk(self) -> int:
        return self.sp.unk_id()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(strip_invisible(text))

    @cached_property
    def _dummy_prefix(self) -> bool:
        return self.sp.normalize("a").startswith("\u2581")

    def normalize(self, text: str) -> str:
        """The text as the model sees it, written back as text: ``strip_invisible``, then the
        model's normalizer (``SentencePieceProcessor.normalize``; none for ``identity``) with its
        whitespace symbol ``▁`` (U+2581, also when typed in the input) read as a space and a dummy
        prefix dropped. ``decode(encode(t)) == normalize(t)`` for any Unicode ``t`` with a
        byte-fallback model (tests/test_bad_data.py checks it on generated text); a text whose
        normalized form is blank is what preprocessing counts as ``empty_text``. Raises what
        sentencepiece raises for text that is not Unicode (a lone surrogate: ``RuntimeError``)."""
        t = self.sp.normalize(strip_invisible(text)).replace("\u2581", " ")
        return t[1:] if self._dummy_prefix and t.startswith(" ") else t

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode([strip_invisible(t) for t in texts])

    def encode_arrays(self, texts: list[str], num_threads: int = 1) -> list[np.ndarray]:
        """``encode`` of each text as a 1-D integer array (int32 with sentencepiece >= 0.2.1, whose
        ``encode(list, out_type="numpy")`` runs the batch in C++ threads without the GIL and returns
        buffers instead of Python ints; older versions give int64 arrays made from the id lists).
        ``num_threads``: sentencepiece's threads for this batch (1 in a worker process that is
        itself one of several). Raises what sentencepiece raises for any text of the batch."""
        texts = [strip_invisible(t) for t in texts]
        if self._numpy_out:
            return self.sp.encode(texts, out_type="numpy", num_threads=num_threads)
        return [np.asarray(ids, dtype=np.int64) for ids in self.sp.encode(texts, num_threads=num_threads)]

    @cached_property
    def _numpy_out(self) -> bool:
        try:  # sentencepiece 0.2.0 has no numpy output type
            return isinstance(self.sp.encode(["a"], out_type="numpy")[0], np.ndarray)
        except Exception:
            return False

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    @cached_property
    def model_bytes(self) -> bytes:
        with open(self.model_path, "rb") as f:
            return f.read()


class HFTokenizer:
    """A Hugging Face tokenizer directory (``hf:<dir>``); requires the ``[hf]`` extra."""

    def __init__(self, path: str):
        try:
            from transformers import AutoTokenizer
        except ImportError as e:
            raise ImportError("hf: tokenizers need `pip install megatron_th[hf]`") from e
        self.model_path = path
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if self.tok.eos_token_id is None:
            raise ValueError(f"{path}: tokenizer has no eos token to use as end-of-document")

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    @property
    def eod(self) -> int:
        return self.tok.eos_token_id

    @property
    def bos(self):
        return self.tok.bos_token_id

    @property
    def pad(self):
        return self.tok.pad_token_id

    @property
    def unk(self):
        return self.tok.unk_token_id

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def normalize(self, text: str) -> str:
        """The backend normalizer's output (``tokenizers`` ``normalize_str``), or the text itself
        when there is none; used to recognise texts that are blank to the tokenizer."""
        norm = getattr(getattr(self.tok, "backend_tokenizer", None), "normalizer", None)
        return norm.normalize_str(text) if norm is not None else text

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` of each text. A fast (Rust ``tokenizers``) tokenizer encodes the list in one
        call, as its ``encode`` does for a one-text list (transformers' ``_encode_plus`` hands both to
        ``Tokenizer.encode_batch``, which runs without the GIL on Rust threads); others text by text."""
        if not getattr(self.tok, "is_fast", False) or not texts:
            return [self.encode(t) for t in texts]
        return self.tok(list(texts), add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]

    def encode_arrays(self, texts: list[str], num_threads: int = 1) -> list[np.ndarray]:
        """``encode_batch`` as int64 arrays (``num_threads`` is not used: the Rust tokenizer sizes its
        own pool, ``RAYON_NUM_THREADS``)."""
        return [np.asarray(ids, dtype=np.int64) for ids in self.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.tok.convert_ids_to_tokens(int(i))


def load_tokenizer(spec: str | os.PathLike):
    """``path/to/model.model`` -> sentencepiece; ``hf:<dir>`` -> Hugging Face."""
    spec = str(spec)
    if spec.startswith("hf:"):
        return HFTokenizer(spec[3:])
    return SentencePieceTokenizer(spec)
