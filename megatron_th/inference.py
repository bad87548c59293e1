"""Load a trained model from a checkpoint and sample from it (tools/generate.py)."""
from __future__ import annotations

import torch

from megatron_th.config import Config
from megatron_th.data.tokenizer import load_tokenizer, model_vocab_size
from megatron_th.model.gpt import GPTModel
from megatron_th.training.resume import load_model, open_checkpoint, tokenizer_spec


def load_for_inference(load_dir: str, iteration: int | None = None, dtype=torch.float32, device="cpu"):
    """(model in eval mode, tokenizer, Config) from any checkpoint; no training state needed."""
    reader = open_checkpoint(load_dir, iteration)
    cfg = Config.from_dict(reader.meta["config"])
    spec = tokenizer_spec(reader) or cfg.data.tokenizer_model
    if not spec:
        raise FileNotFoundError(f"{reader.path}: the checkpoint holds no tokenizer and its config names none")
    tokenizer = load_tokenizer(spec)
    with torch.device("meta"):
        model = GPTModel(cfg.model, model_vocab_size(cfg.model, tokenizer))
    model.to_empty(device="cpu")
    load_model(reader, model)
    return model.to(device=device, dtype=dtype).eval(), tokenizer, cfg


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def generate(model, prompt_ids: list[int], max_new_tokens: int, eod: int | None = None, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int = 0) -> list[int]:
    """New token ids after the prompt. temperature 0 = greedy. Stops after ``eod``."""
    device = next(model.parameters()).device
    limit = model.cfg.max_position_embeddings if model.cfg.position_embedding_type == "learned_absolute" else None
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = list(prompt_ids)
    out = []
    for _ in range(max_new_tokens):
        ctx = ids[-limit:] if limit else ids
        logits = model(tokens=torch.tensor([ctx], device=device))[0, -1].float().cpu()
        if repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(ids)))
            vals = logits[seen]
            logits[seen] = torch.where(vals > 0, vals / repetition_penalty, vals * repetition_penalty)
        if temperature <= 0.0:
            nxt = int(torch.argmax(logits))
        else:
            probs = _filter(logits / temperature, top_k, top_p).softmax(-1)
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        out.append(nxt)
        ids.append(nxt)
        if eod is not None and nxt == eod:
            break
    return out
