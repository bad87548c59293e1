#!/usr/bin/env python
"""DPO throughput: megatron_th's ``--dpo`` loop against TRL's ``DPOTrainer`` with precomputed
reference log-probabilities (``precompute_ref_log_probs=True``), on the same Llama-shaped model
(exported from our checkpoint with convert/to_hf.py), the same token ids, the same batch
(micro-batch x accumulation) and optimizer settings (AdamW, constant lr, no weight decay, clip 1.0),
in one process, fp32.

First the two must agree: our reference table equals TRL's precomputed reference column, and
after a few of our DPO steps the policy's sigmoid loss over every pair (ours: --skip-train
--full-validation; TRL: its own ``_compute_loss`` on the exported policy with its precomputed
reference) agrees to --loss-rtol; otherwise the script stops (exit 1) before timing anything.
Then --runs alternating runs (ours, TRL, ours, TRL, ...): pairs/s = global batch / median step
time after --warmup steps; the reported ratio is the median of the per-run ratios.

Ours packs each pair in one row of --seq-length (the longest pair, rounded up to 8); TRL pads each
micro-batch's 2 x micro-batch sequences to the longest of them (its only mode in TRL 1.x:
``padding_free`` is disabled there). Tokenization is not timed: TRL gets the ids we wrote
(``prompt_ids``/``chosen_ids``/``rejected_ids``; its dataset preparation is bypassed).

Skipped, with a note, when TRL (``pip install trl``) or transformers is absent. Not a test: prints a
table, writes JSON; nothing about time is asserted.
"""
import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("MEGATRON_TH_DISTRIBUTED_BACKEND", "gloo")

from megatron_th.config import parse_config  # noqa: E402
from megatron_th.data.indexed import IndexedDatasetBuilder  # noqa: E402

QUIET = lambda *a, **k: None  # noqa: E731
SIDES = ("chosen", "rejected")


def write_pairs(prefix: str, a, rng) -> list[dict]:
    """Random pairs (ids in [5, vocab)): a prompt of a.prompt/2..a.prompt tokens, completions of
    a.completion/2..a.completion ending in EOS. Written as tools/preprocess_dpo.py writes them;
    returned as TRL's tokenized records."""
    out = {(s, k): IndexedDatasetBuilder(f"{prefix}_{s}_{k}", np.uint16 if k == "tokens" else np.uint8)
           for s in SIDES for k in ("tokens", "loss_mask")}
    records = []
    for _ in range(a.pairs):
        prompt = rng.integers(5, a.vocab, size=rng.integers(a.prompt // 2, a.prompt + 1)).tolist()
        rec = {"prompt_ids": prompt}
        for s in SIDES:
            completion = rng.integers(5, a.vocab, size=rng.integers(a.completion // 2, a.completion)).tolist() + [2]
            out[s, "tokens"].add_document(prompt + completion)
            out[s, "loss_mask"].add_document([0] * len(prompt) + [1] * len(completion))
            rec[f"{s}_ids"] = completion
        records.append(rec)
    for b in out.values():
        b.finalize()
    return records


def model_flags(a, seq: int) -> list[str]:
    return ["--num-layers", str(a.layers), "--hidden-size", str(a.hidden), "--num-attention-heads", str(a.heads),
            "--num-query-groups", str(a.heads), "--ffn-hidden-size", str(a.ffn), "--seq-length", str(seq),
            "--position-embedding-type", "rope", "--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear",
            "--hidden-dropout", "0", "--attention-dropout", "0", "--make-vocab-size-divisible-by", "128",
            "--num-threads", str(a.threads), "--seed", "1"]


def run_ours(argv):
    from megatron_th.training.pretrain import pretrain

    cfg, _ = parse_config(argv)
    return pretrain(cfg, log=QUIET)


def ours_pairs_per_sec(a, dpo: list[str], log_dir: str, save: str | None = None) -> float:
    """One run of --warmup + --steps DPO steps; pairs/s from the median logged step time after warmup."""
    if os.path.exists(log_dir):
        shutil.rmtree(log_dir)
    extra = ["--save", save] if save else []
    run_ours(dpo + ["--train-iters", str(a.warmup + a.steps), "--log-interval", "1", "--log-dir", log_dir] + extra)
    with open(os.path.join(log_dir, "metrics.jsonl")) as f:
        times = [json.loads(line)["step_time"] for line in f][a.warmup:]
    return a.gbs / statistics.median(times)


def trl_trainer(a, hf_dir: str, records: list[dict], out_dir: str, model=None):
    """A DPOTrainer on the exported model that takes our token ids as they are."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    class PreTokenized(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # prompt_ids / chosen_ids / rejected_ids already: the ids ours trains on

    tok = AutoTokenizer.from_pretrained(hf_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = model or AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    args = DPOConfig(output_dir=out_dir, per_device_train_batch_size=a.mbs,
                     gradient_accumulation_steps=a.gbs // a.mbs, learning_rate=a.lr, lr_scheduler_type="constant",
                     warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_steps=a.warmup + a.steps, beta=0.1,
                     loss_type=["sigmoid"], precompute_ref_log_probs=True, precompute_ref_batch_size=a.gbs,
                     max_length=None, report_to=[], save_strategy="no", logging_steps=10**6, disable_tqdm=True,
                     use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, seed=1, bf16=False, fp16=False)
    return PreTokenized(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tok)


def trl_pairs_per_sec(a, hf_dir, records, out_dir) -> float:
    from transformers import TrainerCallback

    ends = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    trainer = trl_trainer(a, hf_dir, records, out_dir)
    trainer.add_callback(StepTimes())
    start = time.perf_counter()
    trainer.train()
    times = np.diff([start] + ends)[a.warmup:]
    return a.gbs / float(np.median(times))


def check_agreement(a, work, dpo, records, table_path, hf_ref) -> dict:
    """Reference tables equal; the loss of the policy after our first run equals TRL's."""
    from safetensors.torch import load_file

    from megatron_th.convert.to_hf import export_to_hf

    trainer = trl_trainer(a, hf_ref, records, os.path.join(work, "trl_check"))
    column = trainer.train_dataset
    ours_ref = load_file(table_path)
    ref_err = max(float(np.max(np.abs(np.asarray(column[f"ref_{s}_logps"]) - ours_ref[f"{s}_logps"].numpy())
                                / np.abs(ours_ref[f"{s}_logps"].numpy()))) for s in SIDES)
    hf_pol = os.path.join(work, "hf_policy")
    export_to_hf(os.path.join(work, "policy"), hf_pol, log=QUIET, progress=False)
    ev = os.path.join(work, "eval_logs")
    out = run_ours(dpo + ["--load", os.path.join(work, "policy"), "--skip-train", "--full-validation", "--split",
                          "0,100,0", "--log-dir", ev])
    ours = out["eval"]["loss"]
    from transformers import AutoModelForCausalLM

    trainer.model.load_state_dict(AutoModelForCausalLM.from_pretrained(hf_pol, dtype=torch.float32).state_dict())
    trainer.model.eval()
    batch = trainer.data_collator([column[i] for i in range(len(column))])
    batch = {k: v.to(trainer.model.device) for k, v in batch.items()}
    with torch.no_grad():
        theirs = float(trainer._compute_loss(trainer.model, batch, False))
    return {"ref_logps_max_rel_diff": ref_err, "policy_loss_ours": ours, "policy_loss_trl": theirs,
            "policy_loss_rel_diff": abs(ours - theirs) / abs(theirs)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=704)
    p.add_argument("--vocab", type=int, default=8000, help="token ids drawn below this (th_en.model has 8000)")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--prompt", type=int, default=64, help="longest prompt (shortest: half)")
    p.add_argument("--completion", type=int, default=128, help="longest completion (shortest: half)")
    p.add_argument("--mbs", type=int, default=4, help="pairs per micro-batch")
    p.add_argument("--gbs", type=int, default=8, help="pairs per optimizer step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=6, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")
    p.add_argument("--runs", type=int, default=3, help="alternating runs of each")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--loss-rtol", type=float, default=1e-5)
    p.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "dpo_throughput.json"))
    a = p.parse_args()
    try:
        import transformers
        import trl
    except ImportError as e:
        print(f"note: skipped, TRL's DPOTrainer is the baseline and it is not installed ({e}); "
              f"`pip install trl` to run this benchmark")
        return 0
    torch.set_num_threads(a.threads)
    from megatron_th.convert.to_hf import export_to_hf
    from megatron_th.training.ref_logps import compute_ref_logps

    work = tempfile.mkdtemp(prefix="dpo_bench_")
    try:
        prefix = os.path.join(work, "pairs")
        records = write_pairs(prefix, a, np.random.default_rng(0))
        longest = max(len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in records)
        seq = -(-longest // 8) * 8
        model = model_flags(a, seq)
        cache = ["--data-cache-path", os.path.join(work, "cache")]
        # the reference: one SFT step on the chosen sides (any checkpoint would do)
        run_ours(model + cache + ["--sft", "--data-path", prefix + "_chosen", "--split", "100,0,0",
                                  "--train-iters", "1", "--micro-batch-size", "1", "--global-batch-size", "1",
                                  "--lr", "1e-3", "--save", os.path.join(work, "ref")])
        table = os.path.join(work, "ref.safetensors")
        compute_ref_logps(model + cache + ["--load", os.path.join(work, "ref"), "--data-path", prefix,
                                           "--micro-batch-size", str(a.mbs), "--global-batch-size", str(a.gbs),
                                           "--output", table], log=QUIET)
        hf_ref = os.path.join(work, "hf_ref")
        export_to_hf(os.path.join(work, "ref"), hf_ref, log=QUIET, progress=False)
        dpo = model + cache + ["--dpo", "--data-path", prefix, "--ref-logps", table, "--split", "100,0,0",
                               "--micro-batch-size", str(a.mbs), "--global-batch-size", str(a.gbs), "--lr", str(a.lr),
                               "--lr-decay-style", "constant", "--weight-decay", "0", "--clip-grad", "1.0"]
        train = dpo + ["--finetune", "--load", os.path.join(work, "ref")]

        rows = []
        ours = ours_pairs_per_sec(a, train, os.path.join(work, "logs0"), save=os.path.join(work, "policy"))
        check = check_agreement(a, work, dpo, records, table, hf_ref)
        print(f"agreement: reference log-probs max rel diff {check['ref_logps_max_rel_diff']:.2e}; policy loss "
              f"ours {check['policy_loss_ours']:.7f} TRL {check['policy_loss_trl']:.7f} "
              f"(rel diff {check['policy_loss_rel_diff']:.2e})")
        if not (check["policy_loss_rel_diff"] <= a.loss_rtol and check["ref_logps_max_rel_diff"] <= a.loss_rtol):
            print(f"error: the losses differ by more than --loss-rtol {a.loss_rtol}: not timing", file=sys.stderr)
            return 1
        for r in range(a.runs):
            if r:
                ours = ours_pairs_per_sec(a, train, os.path.join(work, f"logs{r}"))
            theirs = trl_pairs_per_sec(a, hf_ref, records, os.path.join(work, f"trl{r}"))
            rows.append({"run": r, "megatron_th_pairs_per_sec": ours, "trl_pairs_per_sec": theirs,
                         "ratio": ours / theirs})
            print(f"run {r}: megatron_th {ours:7.2f} pairs/s | TRL DPOTrainer {theirs:7.2f} pairs/s | "
                  f"ratio {ours / theirs:.2f}x", flush=True)
        ratio = statistics.median(r["ratio"] for r in rows)
        print(f"\n| model | pairs | seq (ours) | micro x accum | megatron_th pairs/s | TRL {trl.__version__} pairs/s "
              f"| ratio (median of {a.runs}) |")
        print("|---|---|---|---|---|---|---|")
        print(f"| L{a.layers} H{a.hidden} fp32, {a.threads} threads | {a.pairs} | {seq} | {a.mbs} x {a.gbs // a.mbs} "
              f"| {statistics.median(r['megatron_th_pairs_per_sec'] for r in rows):.2f} "
              f"| {statistics.median(r['trl_pairs_per_sec'] for r in rows):.2f} | {ratio:.2f}x |")
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json + ".tmp", "w") as f:
            json.dump({"config": vars(a), "seq_length": seq, "trl": trl.__version__,
                       "transformers": transformers.__version__, "torch": torch.__version__, "agreement": check,
                       "runs": rows, "ratio_median": ratio}, f, indent=1)
        os.replace(a.json + ".tmp", a.json)
        print(f"wrote {a.json}")
        return 0 if math.isfinite(ratio) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
