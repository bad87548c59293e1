"""A Hugging Face model directory (any family in ``megatron_th/convert/families``) -> our checkpoint.

The result loads with ``--load DIR --use-checkpoint-args`` at any TP/PP/DP (checkpoints are
topology-free) and starts at iteration 0 with a fresh optimizer whose fp32 masters are these
weights. Tensors are streamed one rule at a time into shards (a sharded
``model.safetensors.index.json`` is read shard by shard, one tensor at a time). The checkpoint
keeps what export needs to hand the model back unchanged:

- the HF tokenizer files (``tokenizer/``; or with ``extend_vocab`` the new sentencepiece model,
  whose extra rows are initialised by ``extend_vocab.new_rows``);
- every embedding row the file has, also rows no token reaches (Qwen2.5's 151936 rows for ~151.6k
  tokens): ``vocab_size`` in the model config is the file's row count, so they survive bitwise;
- the base's ``config.json`` and ``generation_config.json`` as read, in the metadata's training
  state (``state["hf_base"]``, carried into every checkpoint training saves from it), which export
  writes back (to_hf.py).
"""
from __future__ import annotations

import json
import os
import shutil
import time


from megatron_th.config import Config
from megatron_th.convert import families
from megatron_th.convert.hf_arch import ConversionError
from megatron_th.convert.hf_files import HFWeights
from megatron_th.convert.hf_tokenizer import HF_TOKENIZER_FILES
from megatron_th.convert.to_hf import DTYPES, HF_BASE, prepare_output, publish
from megatron_th.data.tokenizer import load_tokenizer, padded_vocab_size
from megatron_th.training.resume import save_weights_only
from megatron_th.utils.bars import progress_bar, write

_IGNORED = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")  # buffers older checkpoints saved


def _read_config(hf_dir: str, name: str = "config.json", required: bool = True) -> dict | None:
    path = os.path.join(hf_dir, name)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        if not required:
            return None
        raise ConversionError(f"--hf {hf_dir}: no {name} (is this a Hugging Face model directory?)") from None
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None


def _tokenizer_dir(hf_dir: str, staging: str) -> str:
    """Copy the HF tokenizer files into ``staging`` (stored in the checkpoint as ``tokenizer/``)."""
    names = [f for f in HF_TOKENIZER_FILES if os.path.isfile(os.path.join(hf_dir, f))]
    if not any(n in names for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ConversionError(f"--hf {hf_dir}: no tokenizer files (tokenizer.json / tokenizer.model / vocab.json); "
                              "pass --tokenizer-model")
    os.makedirs(staging, exist_ok=True)
    for n in names:
        shutil.copyfile(os.path.join(hf_dir, n), os.path.join(staging, n))
    return staging


def _set_vocab_size(c: dict, rows: int) -> None:
    """Write ``rows`` where config dict ``c`` keeps its vocabulary size (top level or text_config)."""
    inner = c.get("text_config")
    if "vocab_size" not in c and isinstance(inner, dict):
        inner["vocab_size"] = rows
    else:
        c["vocab_size"] = rows


def import_from_hf(hf_dir: str, output: str, tokenizer_model: str | None = None, extend_vocab: str | None = None,
                   dtype: str | None = None, seq_length: int | None = None, overwrite: bool = False,
                   shard_bytes: int = 2 ** 30, log=write, progress: bool = True) -> dict:
    """Writes the checkpoint to ``output``; returns a summary (architecture, vocab sizes, tensors, bytes,
    added tokens, seconds, checkpoint path). ``log`` gets one line per step; ``progress`` shows a bar
    of the tensors converted on stderr (``megatron_th.utils.bars.progress_bar``). Raises
    ConversionError for a model or tokenizer this converter cannot represent.
    """
    t0 = time.time()
    hf = _read_config(hf_dir)
    where = os.path.join(hf_dir, "config.json")
    arch, fam, fields = families.read_config(hf, where, log)
    weights = HFWeights(hf_dir)
    names = weights.names()
    prefix = fam.hf_prefix(hf, names)

    def hf_name(n: str) -> str:  # as the file stores it; old GPT-2 files lack the "transformer." prefix
        stored = families.hf_name(fam, n, prefix)
        short = stored.split(".", 1)[-1]
        return short if stored not in weights and short in weights else stored

    tmp = prepare_output(output, overwrite)
    staging = os.path.join(tmp, ".staging")
    tok_spec = tokenizer_model or "hf:" + _tokenizer_dir(hf_dir, os.path.join(staging, "tokenizer"))
    old_tok = load_tokenizer(tok_spec)
    cfg = Config()
    for k, v in fields.items():
        setattr(cfg.model, k, v)
    m = cfg.model
    m.seq_length = seq_length or min(m.max_position_embeddings, 4096)
    m.hidden_dropout = m.attention_dropout = 0.0
    m.init_method_std = hf.get("initializer_range", m.init_method_std)
    rows = fields["vocab_size"]
    plan = fam.rules(m, rows, padded_vocab_size(rows, m.make_vocab_size_divisible_by))
    emb_name = hf_name(next(r.hf[0] for r in plan if r.ours[0] == "embedding.word_embeddings.weight"))
    stored_rows = weights.shape(emb_name)[0]  # the header only: the embedding is read once, later
    if stored_rows != rows:
        raise ConversionError(f"--hf {hf_dir}: config.json says vocab_size {rows} but {emb_name} has "
                              f"{stored_rows} rows")
    if old_tok.vocab_size > rows:
        raise ConversionError(f"--hf {hf_dir}: the tokenizer has {old_tok.vocab_size} tokens but the embedding "
                              f"{emb_name} has only {rows} rows")
    vocab, extension = rows, None
    if extend_vocab:
        from megatron_th.convert.extend_vocab import VocabExtension

        extension = VocabExtension(old_tok, extend_vocab, log)
        vocab, tok_spec = extension.new_vocab_size, extend_vocab
        if rows > old_tok.vocab_size:
            log(f"note: the embedding has {rows} rows for {old_tok.vocab_size} tokens; with --extend-vocab the "
                f"{rows - old_tok.vocab_size} rows no token reaches are replaced by the new tokens' rows")
    elif rows > old_tok.vocab_size:
        log(f"note: the embedding has {rows} rows for {old_tok.vocab_size} tokens: all {rows} are kept "
            f"(--vocab-size {rows}) and exported back")
    m.vocab_size = vocab
    padded = padded_vocab_size(vocab, m.make_vocab_size_divisible_by)
    plan = fam.rules(m, vocab, padded)
    known = {hf_name(n) for r in plan for n in r.hf}
    if not m.untie_embeddings_and_output_weights:
        known.add(hf_name("lm_head.weight"))  # some tied checkpoints store the copy too
    skipped = set(families.dropped(fam, hf, names, f"--hf {hf_dir}", log))
    extra = [n for n in names if n not in known and n not in skipped and not n.endswith(_IGNORED)]
    if extra:
        raise ConversionError(f"--hf {hf_dir}: tensors this {arch} config does not explain: {extra[:4]}"
                              f"{' ...' if len(extra) > 4 else ''}")
    cast = DTYPES[dtype] if dtype else None
    stats = {"tensors": 0, "bytes": 0}

    def tensors(bar):
        for rule in plan:
            got = [weights.get(hf_name(n)) for n in rule.hf]
            if extension is not None and rule.ours[0] in ("embedding.word_embeddings.weight", "output_layer.weight"):
                got = [extension.extend(got[0][: old_tok.vocab_size])]
            for name, t in zip(rule.ours, rule.from_hf(got)):
                t = t.to(cast) if cast is not None else t
                stats["tensors"] += 1
                stats["bytes"] += t.numel() * t.element_size()
                bar.set_postfix_str(f"{stats['bytes'] / 2 ** 20:.1f} MiB", refresh=False)
                bar.update()
                yield name, t

    base = {"config.json": hf, "generation_config.json": _read_config(hf_dir, "generation_config.json", False)}
    if extension is not None:
        _set_vocab_size(hf, vocab)
    # the training state every later checkpoint of this model carries (training/pretrain.py keeps
    # the loaded state's keys): export writes the base's config back from it
    state = {"iteration": 0, "consumed_samples": 0, "skipped_iters": 0, HF_BASE: base}
    meta = {"source": {"hf_dir": os.path.abspath(hf_dir), "architecture": families.architecture_name(arch),
                       "hf_vocab_rows": rows, "extended_from": old_tok.vocab_size if extension else None},
            "state": state}
    total = sum(len(r.ours) for r in plan)
    with progress_bar(total, "importing", unit="tensor", disable=not progress) as bar:
        path = save_weights_only(tmp, 0, tensors(bar), cfg.to_dict(), tok_spec, meta, shard_bytes)
    shutil.rmtree(staging, ignore_errors=True)  # the tokenizer files are now inside the checkpoint
    publish(tmp, output)
    summary = {"architecture": arch, "vocab_size": vocab, "padded_vocab_size": padded, **stats,
               "added_tokens": extension.added if extension else 0, "seconds": time.time() - t0,
               "checkpoint": os.path.join(output, os.path.basename(path))}
    log(f"wrote {output}: {arch} -> megatron_th, {stats['tensors']} tensors, {stats['bytes'] / 2 ** 20:.1f} MiB, "
        f"vocab {vocab} (padded {padded}), {summary['seconds']:.1f} s")
    log(f"continue pretraining with: torchrun --nproc-per-node N pretrain_gpt.py --load {output} "
        f"--use-checkpoint-args --save NEW_DIR --data-path ... [--tensor-model-parallel-size ...]")
    return summary
