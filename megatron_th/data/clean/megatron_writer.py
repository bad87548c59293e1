"""Kept documents -> Megatron ``.bin/.idx``, through the encode-and-write code of preprocessing.

``MegatronDocumentWriter`` is a pass-through pipeline step: each task encodes its documents with
the very functions ``tools/preprocess_data.py`` runs in its workers
(``megatron_th.data.preprocess._init_worker`` / ``_encode_value``: the tokenizer's ids, nothing
prepended, a text that the tokenizer cannot take or that is blank once normalized skipped and
counted) and appends EOD with ``append_eod``, into its own shard
``folder/{rank:05d}_{key}_document`` written by ``IndexedDatasetBuilder`` (tmp files renamed at
the end). ``merge_shards`` then concatenates the shards in task order into
``{output_prefix}_{key}_document.bin/.idx``. Since the tasks hold the input in order and the kept
files are written in the same order, the result equals, byte for byte, what
``tools/preprocess_data.py --input 'OUT/kept/*.jsonl.gz' --json-keys KEY`` writes.
"""
from __future__ import annotations

import os

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from megatron_th.data import preprocess
from megatron_th.data.indexed import IndexedDataset, IndexedDatasetBuilder, best_token_dtype


def shard_prefix(folder: str, rank: int, key: str) -> str:
    return os.path.join(folder, f"{rank:05d}_{key}_document")


class MegatronDocumentWriter(PipelineStep):
    """Encodes every document (see the module docstring) and passes it on unchanged.

    Args:
        output_folder: where the per-task shards go.
        tokenizer_model: a sentencepiece ``.model`` or ``hf:<dir>`` (as ``--tokenizer-model``).
        key: the dataset name part, the text field (``{prefix}_{key}_document``).
        append_eod: append the tokenizer's EOD id to each document.
    """

    type = "💽 - WRITER"
    name = "🧱 Megatron .bin/.idx"

    def __init__(self, output_folder: str, tokenizer_model: str, key: str = "text", append_eod: bool = False):
        super().__init__()
        self.output_folder, self.tokenizer_model = output_folder, tokenizer_model
        self.key, self.append_eod = key, append_eod

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        preprocess._init_worker(self.tokenizer_model)
        tok = preprocess._TOK
        builder = IndexedDatasetBuilder(shard_prefix(self.output_folder, rank, self.key),
                                        best_token_dtype(tok.vocab_size))
        try:
            for doc in data or ():
                with self.track_time():
                    ids = preprocess._encode_value(doc.text)
                    if isinstance(ids, list):
                        if self.append_eod:
                            ids = ids + [tok.eod]
                        builder.add_document(ids)
                        self.stat_update("tokens", value=len(ids))
                        self.stat_update("encoded_docs")
                    else:
                        self.stat_update(f"skipped_{ids[0]}")
                yield doc
            builder.finalize()
        except BaseException:
            builder.discard()
            raise


def merge_shards(folder: str, tasks: int, key: str, output_prefix: str) -> str:
    """Concatenates the shards of tasks 0..tasks-1 in order into ``{output_prefix}_{key}_document``
    (written under temporary names, renamed at the end). Returns that prefix. Raises
    ``IndexedDatasetError`` naming a missing or damaged shard."""
    shards = [IndexedDataset(shard_prefix(folder, r, key)) for r in range(tasks)]
    out = f"{output_prefix}_{key}_document"
    dtype = shards[0].dtype if shards else None
    with IndexedDatasetBuilder(out, dtype) as builder:
        for ds in shards:
            for i in range(len(ds)):
                builder.add_document(ds[i])
    return out
