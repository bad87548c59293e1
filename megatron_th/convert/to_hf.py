"""Checkpoint (any TP/PP/DP layout) -> a directory `transformers` loads with ``from_pretrained``.

Streams: each HF tensor is built from whole logical tensors read from the checkpoint's slices,
added to the current safetensors shard, and the shard is written when it is full, so memory stays
near one shard. The output is assembled in ``OUT.tmp`` and renamed at the end: an interrupted
export leaves no half-written model behind. fp32 master weights are preferred when the checkpoint
has them (16-bit training), then cast to ``dtype``.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import torch

from megatron_th.config import Config
from megatron_th.convert.hf_arch import ConversionError, choose_architecture, hf_config
from megatron_th.convert.hf_files import DEFAULT_SHARD_BYTES, ShardedWriter
from megatron_th.convert.hf_weights import rules
from megatron_th.data.tokenizer import load_tokenizer, padded_vocab_size
from megatron_th.training.resume import open_checkpoint, tokenizer_spec
from megatron_th.utils.bars import progress_bar, write

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def prepare_output(output: str, overwrite: bool) -> str:
    """The temporary directory to build ``output`` in; refuses to clobber a non-empty ``output``."""
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)) and not overwrite:
        raise ConversionError(f"--output {output}: exists and is not empty (pass --overwrite to replace it)")
    tmp = output.rstrip("/") + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    return tmp


def publish(tmp: str, output: str) -> None:
    if os.path.exists(output):
        shutil.rmtree(output) if os.path.isdir(output) else os.remove(output)
    os.replace(tmp, output)


def export_to_hf(load: str, output: str, iteration: int | None = None, dtype: str | None = None,
                 architecture: str | None = None, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 overwrite: bool = False, log=write, progress: bool = True) -> dict:
    """Writes the HF model; returns a summary (architecture, files, tensors, bytes, seconds).

    ``log`` gets one line per step; ``progress`` shows a bar of the tensors written on stderr
    (``megatron_th.utils.bars.progress_bar``).
    """
    t0 = time.time()
    reader = open_checkpoint(load, iteration)
    cfg = Config.from_dict(reader.meta["config"])
    m = cfg.model
    spec = tokenizer_spec(reader) or cfg.data.tokenizer_model
    if not spec:
        raise ConversionError(f"{reader.path}: the checkpoint holds no tokenizer and its config names none")
    tokenizer = load_tokenizer(spec)
    vocab = tokenizer.vocab_size
    padded = padded_vocab_size(vocab, m.make_vocab_size_divisible_by)
    rows = reader.shape("embedding.word_embeddings.weight")[0]
    if rows != padded:
        raise ConversionError(f"{reader.path}: the tokenizer ({spec}) has {vocab} tokens, padded to {padded} rows, "
                              f"but the embedding has {rows} rows: wrong tokenizer for this checkpoint")
    arch = choose_architecture(m, architecture)
    stored = getattr(torch, reader.tensors["embedding.word_embeddings.weight"]["dtype"])
    out_dtype = DTYPES[dtype] if dtype else stored
    if out_dtype not in _DTYPE_NAMES:
        raise ConversionError(f"{reader.path}: weights are {stored}; pass --dtype fp32|bf16|fp16")
    model_tensors = {n for n in reader.tensors if not n.startswith(("optim.", "rng."))}
    plan = rules(m, arch, vocab, padded)
    used = {n for r in plan for n in r.ours}
    if model_tensors - used or used - model_tensors:
        extra, missing = sorted(model_tensors - used), sorted(used - model_tensors)
        raise ConversionError(f"{reader.path}: tensors do not match a {arch} of this config "
                              f"(unexpected {extra[:3]}, missing {missing[:3]})")
    tmp = prepare_output(output, overwrite)
    log(f"exporting {reader.path} ({len(model_tensors)} tensors, saved at TP{reader.meta['layout']['tp']} "
        f"PP{reader.meta['layout']['pp']} DP{reader.meta['layout']['dp']}) as {arch} {_DTYPE_NAMES[out_dtype]}")
    writer = ShardedWriter(tmp, max_shard_bytes)
    with progress_bar(len(writer_names(plan)), "exporting", unit="tensor", disable=not progress) as bar:
        for rule in plan:
            ours = [reader.read("optim.master." + n if "optim.master." + n in reader.tensors else n) for n in rule.ours]
            for name, t in zip(rule.hf, rule.to_hf(ours)):
                writer.add(name, t.to(out_dtype))
            bar.set_postfix_str(f"{writer.total / 2 ** 20:.1f} MiB", refresh=False)
            bar.update(len(rule.hf))
        files = writer.finish()
    config = hf_config(m, arch, vocab, tokenizer, _DTYPE_NAMES[out_dtype])
    gen = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
           "pad_token_id": config["pad_token_id"], "do_sample": False}
    for name, obj in (("config.json", config), ("generation_config.json", gen)):
        with open(os.path.join(tmp, name), "w") as f:
            json.dump(obj, f, indent=2)
    from megatron_th.convert.hf_tokenizer import export_tokenizer, import_check

    files += ["config.json", "generation_config.json"]
    files += export_tokenizer(tokenizer, tmp, model_max_length=m.max_position_embeddings)
    checked = import_check(tokenizer, tmp)  # AutoTokenizer must give our ids, or nothing is published
    log(f"  tokenizer: AutoTokenizer ids equal ours on {checked} sample tokens (Thai + English)")
    publish(tmp, output)
    summary = {"architecture": arch, "files": sorted(files), "tensors": len(writer_names(plan)),
               "bytes": writer.total, "peak_shard_bytes": writer.peak_pending, "vocab_size": vocab,
               "iteration": reader.meta.get("iteration"), "seconds": time.time() - t0}
    log(f"wrote {output}: {arch}, {summary['tensors']} tensors, {writer.total / 2 ** 20:.1f} MiB in "
        f"{len([f for f in files if f.endswith('.safetensors')])} shard(s), vocab {vocab} "
        f"(padding {padded - vocab} rows dropped), {summary['seconds']:.1f} s")
    return summary


def writer_names(plan) -> list[str]:
    return [n for r in plan for n in r.hf]
