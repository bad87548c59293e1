"""Direct preference optimisation (and IPO, hinge, conservative DPO, RPO) on packed pairs.

Each sample holds one pair: the chosen and the rejected sequence in one row, each attending only
to itself (data/dpo_dataset.py). The model's per-token cross entropy gives the policy
log-probabilities ``log p(label) = -CE``; summed (in float64) over a side's completion label
positions they are pi_c and pi_r. The reference's sums r_c, r_r come from ``--ref-logps`` (computed once by
tools/compute_ref_logps.py; no second model in memory). Dropout is forced to 0, in the policy here
and in the reference pass (a known source of reference mismatch). With

    Delta = (pi_c - pi_r) - (r_c - r_r)

the per-pair loss is (``--dpo-loss``, beta = ``--dpo-beta``, eps = ``--dpo-label-smoothing``):

- ``sigmoid``: -(1 - eps) log sigma(beta Delta) - eps log sigma(-beta Delta) — DPO (Rafailov et al.
  2023, "Direct Preference Optimization", eq. 7) with the conservative-DPO label smoothing
  (Mitchell 2023, "A note on DPO with noisy preferences"); TRL's ``loss_type="sigmoid"`` (its
  ``label_smoothing`` in TRL 0.x; TRL 1.x's sigmoid has none).
- ``ipo``: (Delta_avg - 1 / (2 beta))^2 with each side's log-ratio averaged per completion token
  (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
  Preferences", eq. 17; per-token averaging as TRL does on the authors' advice). Rewards and
  ``logps/*`` stay summed, as TRL 1.x logs them (TRL 0.x logged per-token averages for IPO).
- ``hinge``: max(0, 1 - beta Delta) (SLiC-HF, Zhao et al. 2023); TRL's ``loss_type="hinge"``.

``--dpo-sft-weight w`` adds w x the mean NLL over the global batch's chosen completion tokens
(RPO, Pang et al. 2024, "Iterative Reasoning Preference Optimization"; TRL 0.x ``rpo_alpha``, TRL 1.x
``loss_type=["sigmoid", "sft"]`` with ``loss_weights=[1, w]``).
The step's loss is the mean over the global batch's pairs (plus that term), so gradients do not
depend on the micro-batch / accumulation / DP split. Logged with TRL's names: ``loss``,
``rewards/chosen`` = beta (pi_c - r_c), ``rewards/rejected``, ``rewards/accuracies`` (chosen
reward > rejected), ``rewards/margins``, ``logps/chosen``, ``logps/rejected``; the NLL as ``nll_loss``.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.nn.functional as F

from megatron_th.config import ConfigError
from megatron_th.data.dpo_dataset import SIDES, build_dpo_datasets, collate
from megatron_th.training.tasks.base import CollatedSamples, Task, pad_token
from megatron_th.training.tasks.lm import sample_counts

STATS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
         "logps/rejected", "nll_loss", "pairs")
REF_KEYS = ("chosen_logps", "rejected_logps", "chosen_tokens", "rejected_tokens")


def data_fingerprint(prefix: str) -> dict:
    """sha256 of the four ``.idx`` files of a DPO prefix (they fix every record's length and the
    token file's layout; the .bin bytes are covered by the sizes of each record only)."""
    out = {}
    for side in SIDES:
        for kind in ("tokens", "loss_mask"):
            path = f"{prefix}_{side}_{kind}.idx"
            with open(path, "rb") as f:
                out[os.path.basename(path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def checkpoint_fingerprint(meta: dict) -> str:
    """sha256 of a checkpoint's metadata (config, iteration, tensor index): which weights these are."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()


def read_ref_logps(path: str, prefix: str, load_meta: dict | None) -> dict:
    """The reference table of ``--ref-logps`` (float64 tensors REF_KEYS, indexed by pair id),
    refused (ConfigError) when missing, when its data fingerprint differs from ``prefix``'s
    (the data changed since), or when ``load_meta`` (the --finetune checkpoint) is not the
    checkpoint it was computed from."""
    from safetensors.torch import load_file

    try:
        with open(path + ".json") as f:
            fp = json.load(f)
        table = load_file(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--ref-logps {path}: cannot read it or {path}.json ({e}); run "
                          f"tools/compute_ref_logps.py --load SFT_CKPT --data-path {prefix} --output {path}") from None
    if fp.get("data") != data_fingerprint(prefix):
        raise ConfigError(f"--ref-logps {path}: computed for other data than --data-path {prefix} (its .idx hashes "
                          f"differ): recompute it with tools/compute_ref_logps.py")
    if load_meta is not None and fp.get("checkpoint", {}).get("digest") != checkpoint_fingerprint(load_meta):
        raise ConfigError(f"--ref-logps {path}: computed from {fp.get('checkpoint', {}).get('path')} (iteration "
                          f"{fp.get('checkpoint', {}).get('iteration')}), not from the --load checkpoint: "
                          f"recompute it, or --load the reference")
    missing = [k for k in REF_KEYS if k not in table]
    if missing:
        raise ConfigError(f"--ref-logps {path}: missing tensors {missing}")
    return {k: table[k].double() for k in REF_KEYS}


class DPOTask(CollatedSamples, Task):
    """``--dpo``; with ``reference=True`` the forward-only reference pass of compute_ref_logps."""

    name = "dpo"
    collate = staticmethod(collate)
    loss_name = "loss"
    stat_names = STATS

    def __init__(self, cfg, reference: bool = False):
        super().__init__(cfg)
        t = cfg.train
        self.kind, self.beta = t.dpo_loss, t.dpo_beta
        self.eps, self.sft_weight = t.dpo_label_smoothing, t.dpo_sft_weight
        self.reference, self.ref = reference, None
        # global counts of the step's chosen completion tokens and pairs (begin_step; the RPO term)
        self.chosen_tokens = self.pairs_total = 1.0
        cfg.model.hidden_dropout = cfg.model.attention_dropout = 0.0
        self.record = {"loss_type": self.kind, "beta": self.beta}

    def setup_data(self, cfg, tokenizer, vocab_size, log, resumed, group) -> dict:
        d, t = cfg.data, cfg.train
        if len(d.data_path) != 1:
            raise ConfigError(f"--dpo takes one --data-path PREFIX (tools/preprocess_dpo.py output), got "
                              f"{' '.join(d.data_path) or 'none'}")
        prefix = d.data_path[0]
        if not self.reference:
            if not t.ref_logps:
                raise ConfigError("--dpo needs --ref-logps FILE (tools/compute_ref_logps.py --load SFT_CKPT "
                                  f"--data-path {prefix} --output FILE)")
            self.ref = read_ref_logps(t.ref_logps, prefix, getattr(self, "load_meta", None))
        log("DPO: dropout forced to 0 (policy and reference must see the same network)")
        return build_dpo_datasets(prefix, d.split, cfg.model.seq_length, t.seed, sample_counts(cfg, resumed),
                                  pad_token_id=pad_token(tokenizer), log=log, cache_dir=d.data_cache_path, group=group,
                                  vocab_size=vocab_size)

    # -- the loss ---------------------------------------------------------------------------------------
    def _policy(self, per_token, mb):
        """Per pair: summed completion log-probs and token counts of each side (float64 device
        tensors [b]). Summed in float64: a reward is a small difference of two sums over hundreds of
        tokens, which float32 summation would blur."""
        dev = per_token.device
        logp = -per_token.double()
        out = {}
        for side in SIDES:
            mask = mb[f"{side}_mask"].to(dev, torch.float64)
            out[side] = (logp * mask).sum(1)
            out[side + "_n"] = mask.sum(1).clamp(min=1.0)
        return out

    def begin_step(self, micro_batches, all_reduce) -> float:
        pairs = sum(float(mb["pair_ids"].numel()) for mb in micro_batches)
        chosen = sum(float(mb["chosen_mask"].sum(dtype=torch.float64)) for mb in micro_batches)
        pairs, chosen = all_reduce([pairs, chosen])
        self.chosen_tokens, self.pairs_total = max(chosen, 1.0), max(pairs, 1.0)
        return pairs

    def normalizer(self, mb) -> float:
        return float(mb["pair_ids"].numel())

    def _terms(self, per_token, mb):
        pol = self._policy(per_token, mb)
        ids = mb["pair_ids"]
        ref = {k: self.ref[k][ids].to(per_token.device) for k in REF_KEYS}
        pc, pr = pol["chosen"], pol["rejected"]
        # log-ratios in float64, as the sums and the table
        ratio_c, ratio_r = pc - ref["chosen_logps"], pr - ref["rejected_logps"]
        if self.kind == "ipo":  # per-token averaged log-ratios in the loss only (TRL 1.x: metrics stay summed)
            nc, nr = ref["chosen_tokens"].clamp(min=1.0), ref["rejected_tokens"].clamp(min=1.0)
            delta = ratio_c / nc - ratio_r / nr
        else:
            delta = ratio_c - ratio_r
        if self.kind == "sigmoid":
            losses = -(1 - self.eps) * F.logsigmoid(self.beta * delta) - self.eps * F.logsigmoid(-self.beta * delta)
        elif self.kind == "ipo":
            losses = (delta - 1 / (2 * self.beta)) ** 2
        else:
            losses = torch.relu(1 - self.beta * delta)
        nll = -pc.sum()  # summed NLL of the chosen completion tokens
        rew_c, rew_r = self.beta * ratio_c.detach(), self.beta * ratio_r.detach()
        return losses, nll, rew_c, rew_r, pc.detach(), pr.detach()

    def loss(self, per_token, mb):
        losses, nll, rew_c, rew_r, pc, pr = self._terms(per_token, mb)
        loss = losses.sum()
        if self.sft_weight:
            # RPO: w * (sum of chosen NLL) / (global chosen tokens), rescaled so that the loop's
            # division by the global pair count leaves exactly that term
            loss = loss + self.sft_weight * nll * (self.pairs_total / self.chosen_tokens)
        stats = torch.stack([loss.detach().double(), rew_c.sum().double(), rew_r.sum().double(),
                             (rew_c > rew_r).sum().double(), (rew_c - rew_r).sum().double(), pc.sum().double(),
                             pr.sum().double(), nll.detach().double() * (self.pairs_total / self.chosen_tokens),
                             torch.tensor(float(len(pc)), dtype=torch.float64, device=pc.device)])
        return loss, stats

    def train_metrics(self, stats, normalizer) -> dict:
        n = max(normalizer, 1.0)
        return {k: v / n for k, v in zip(STATS[:-1], stats[:-1])}

    # -- evaluation and the reference pass ---------------------------------------------------------------
    def eval_stats(self, per_token, mb):
        if self.reference:
            pol = self._policy(per_token, mb)
            return torch.stack([pol["chosen"].double(), pol["rejected"].double(), pol["chosen_n"].double(),
                                pol["rejected_n"].double(), mb["pair_ids"].to(per_token.device).double(),
                                (mb["loss_mask"].sum(1) > 0).to(per_token.device).double()], dim=1)
        losses, nll, rew_c, rew_r, pc, pr = self._terms(per_token, mb)
        ones = torch.ones_like(losses, dtype=torch.float64)
        real = (mb["loss_mask"].sum(1) > 0).to(per_token.device).double()  # padding of a full pass counts 0
        cols = [losses.double(), rew_c.double(), rew_r.double(), (rew_c > rew_r).double(), (rew_c - rew_r).double(),
                pc.double(), pr.double(), ones * 0, ones]
        return torch.stack(cols, dim=1) * real.unsqueeze(1)

    def eval_metrics(self, sums) -> dict:
        if self.reference:
            return {"pairs": sums[-1]}
        n = max(sums[-1], 1.0)
        return {k: v / n for k, v in zip(STATS[:-2], sums[:-2])}
