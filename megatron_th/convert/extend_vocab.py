"""Grow the embedding (and untied head) for the pieces an extended sentencepiece model adds.

The new model must keep every old piece at its old id (``tools/extend_tokenizer.py`` builds one:
base pieces first, new pieces appended). Row ``j`` of a new piece starts as the mean of the old
rows of the pieces the OLD vocabulary splits that piece's text into: a sentencepiece BPE over the
old pieces only (their scores decide the merges, unknown characters fall back to byte pieces),
which is what the old tokenizer does with the text. A piece the old vocabulary cannot spell at all
gets the mean of all old rows; the count is reported.
"""
from __future__ import annotations

import torch

from megatron_th.convert.hf_arch import ConversionError
from megatron_th.data.tokenizer import SentencePieceTokenizer


def bpe_split(text: str, vocab: dict[str, tuple[int, float]]) -> list[int]:
    """Sentencepiece-style BPE of ``text`` (pieces use ``▁`` for spaces) over ``vocab``
    (piece -> (id, score)): start from characters, merge the adjacent pair whose concatenation is
    a piece with the highest score (leftmost on ties) until none is. [] if a character cannot be
    spelled, even with byte pieces."""
    syms = []
    for ch in text:
        if ch in vocab:
            syms.append(ch)
            continue
        pieces = [f"<0x{b:02X}>" for b in ch.encode("utf-8")]
        if not all(p in vocab for p in pieces):
            return []
        syms.extend(pieces)
    while len(syms) > 1:
        best, at = None, -1
        for i in range(len(syms) - 1):
            cand = vocab.get(syms[i] + syms[i + 1])
            if cand is not None and not syms[i].startswith("<0x") and (best is None or cand[1] > best):
                best, at = cand[1], i
        if at < 0:
            break
        syms[at:at + 2] = [syms[at] + syms[at + 1]]
    return [vocab[s][0] for s in syms]


class VocabExtension:
    def __init__(self, old_tokenizer, new_model: str, log=print):
        self.new = SentencePieceTokenizer(new_model)
        self.old_size, self.new_vocab_size = old_tokenizer.vocab_size, self.new.vocab_size
        sp = self.new.sp
        for i in range(self.old_size):
            a, b = old_tokenizer.id_to_piece(i), sp.id_to_piece(i)
            if a != b:
                raise ConversionError(
                    f"--extend-vocab {new_model}: piece {i} is {b!r} but the model's tokenizer has {a!r}; the new "
                    "model must keep every old piece at its id (build it with tools/extend_tokenizer.py)")
        if self.new_vocab_size <= self.old_size:
            raise ConversionError(f"--extend-vocab {new_model}: {self.new_vocab_size} pieces, no more than the "
                                  f"model's {self.old_size}: nothing to add")
        old = {sp.id_to_piece(i): (i, sp.get_score(i)) for i in range(self.old_size)
               if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))}
        self.splits = []
        self.unspellable = 0
        for j in range(self.old_size, self.new_vocab_size):
            ids = [] if (sp.is_control(j) or sp.is_unknown(j) or sp.is_byte(j)) else bpe_split(sp.id_to_piece(j), old)
            self.unspellable += not ids
            self.splits.append(ids)
        self.added = self.new_vocab_size - self.old_size
        log(f"--extend-vocab: {self.added} tokens added ({self.old_size} -> {self.new_vocab_size}), each row the "
            f"mean of its old pieces' rows (mean {self._mean_len():.2f} pieces per new token)"
            + (f"; {self.unspellable} not spellable with the old pieces got the mean of all rows"
               if self.unspellable else ""))

    def _mean_len(self) -> float:
        lens = [len(s) for s in self.splits if s]
        return sum(lens) / max(len(lens), 1)

    def extend(self, rows: torch.Tensor) -> torch.Tensor:
        """[old_size, h] -> [new_size, h]; old rows unchanged, bitwise."""
        if rows.shape[0] != self.old_size:
            raise ConversionError(f"embedding has {rows.shape[0]} rows, the tokenizer {self.old_size} tokens")
        base = rows.float()
        fallback = base.mean(0)
        new = torch.stack([base[ids].mean(0) if ids else fallback for ids in self.splits])
        return torch.cat([rows, new.to(rows.dtype)])
