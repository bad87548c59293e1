#!/usr/bin/env python
"""SFT throughput: megatron_th (`pretrain_gpt.py --sft`) vs TRL's SFTTrainer with packing, same
model (our initial weights exported to HF), same conversations, same sequence length and batch.

1. Data: tools/preprocess_sft.py on the embedded chat set (megatron_th/assets/chat/train.jsonl,
   chatml, the embedded tokenizer) unless --data-path PREFIX is given.
2. Loss check: our first packed global batch (B sequences of --seq-length) through our model and
   through TRL (its padding-free collator on the same conversations, SFTTrainer.compute_loss on
   the exported model) must agree within 1e-5 relative, else the benchmark stops.
3. Throughput: --runs alternating runs of each side (ours, TRL, ours, ...), each --warmup + --steps
   optimizer steps from the same weights; a step's time is from the end of the previous step to its
   end (data loading, forward, backward, optimizer). Tokens/s counts real tokens only (not padding):
   ours = the conversations' tokens in the step's packed sequences, TRL = the tokens of its
   padding-free batch. TRL packs with its own best-fit decreasing (``packing_strategy="bfd"``,
   TRL's default), which implies padding-free batches: by default each step's --batch bins are one
   row (``--trl-micro-batch 1``: one bin per forward, accumulated).

Reports each run, the median tokens/s of each side and the median of the per-pair ratios
(ours / TRL; the goal is >= 1.0). Prints a table, writes JSON. Not a test: nothing is asserted on
time. Without TRL (`pip install trl`) it prints a note and exits 0.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = lambda *a, **k: None  # noqa: E731


def prepare_data(a, tmp) -> str:
    if a.data_path:
        return a.data_path
    prefix = os.path.join(tmp, "chat")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "preprocess_sft.py"), "--input",
           os.path.join(ROOT, "megatron_th", "assets", "chat", "train.jsonl"), "--tokenizer-model", a.tokenizer_model,
           "--output-prefix", prefix, "--chat-template", "chatml", "--max-seq-length", str(a.seq),
           "--overlong", "drop", "--workers", "1", "--quiet"]
    subprocess.run(cmd, check=True)
    return prefix


def our_argv(a, prefix, ck, cache, log_dir, iters):
    return ["--num-layers", str(a.layers), "--hidden-size", str(a.hidden), "--num-attention-heads", str(a.heads),
            "--num-query-groups", str(a.query_groups), "--ffn-hidden-size", str(a.ffn), "--seq-length", str(a.seq),
            "--position-embedding-type", "rope", "--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear",
            "--hidden-dropout", "0", "--attention-dropout", "0", "--make-vocab-size-divisible-by", "128",
            "--tokenizer-model", a.tokenizer_model, "--sft", "--data-path", prefix, "--data-cache-path", cache,
            "--split", "100,0,0", "--micro-batch-size", str(a.batch), "--global-batch-size", str(a.batch),
            "--lr", str(a.lr), "--lr-decay-style", "constant", "--lr-warmup-iters", "0", "--clip-grad", "1.0",
            "--weight-decay", "0.0", "--seed", "0", "--num-threads", str(a.threads), "--peak-tflops", "1",
            "--log-interval", "1", "--log-dir", log_dir, "--load", ck, "--finetune", "--train-iters", str(iters)]


def initial_checkpoint(a, prefix, tmp) -> tuple[str, str]:
    """Our seeded initial weights saved as a checkpoint, and the same exported to HF."""
    from megatron_th.config import finalize, parse_config
    from megatron_th.convert.to_hf import export_to_hf
    from megatron_th.data.tokenizer import load_tokenizer, model_vocab_size
    from megatron_th.model.gpt import build_model
    from megatron_th.training.resume import save_weights_only

    argv = our_argv(a, prefix, "unused", os.path.join(tmp, "cache"), tmp, 1)
    argv = argv[:argv.index("--load")]
    cfg, _ = parse_config(argv)
    finalize(cfg, 1)
    vocab = model_vocab_size(cfg.model, load_tokenizer(a.tokenizer_model))
    model = build_model(cfg.model, vocab, seed=0)
    ck, hf = os.path.join(tmp, "init"), os.path.join(tmp, "init_hf")
    save_weights_only(ck, 0, list(model.state_dict().items()), cfg.to_dict(), a.tokenizer_model)
    export_to_hf(ck, hf, log=QUIET, progress=False)
    return ck, hf


def our_dataset_and_task(argv):
    from megatron_th.config import finalize, parse_config
    from megatron_th.training.pretrain import setup_data
    from megatron_th.training.tasks.sft import SFTTask

    cfg, _ = parse_config(argv)
    finalize(cfg, 1)
    task = SFTTask(cfg)
    tok, _, ds = setup_data(cfg, QUIET, None, task)
    return cfg, task, tok, ds["train"]


def our_loss(a, ck, argv) -> tuple[float, list]:
    """Our token-normalised SFT loss of the first global batch, and its samples."""
    import torch

    from megatron_th.inference import load_for_inference
    from megatron_th.training.step import model_inputs

    cfg, task, tok, ds = our_dataset_and_task(argv)
    model, _, _ = load_for_inference(ck)
    loader = task.loader(cfg, ds, tok)
    micro = loader.next_global_batch()
    with torch.no_grad():
        total = sum(float(task.loss(model(**model_inputs(mb, "cpu")), mb)[0]) for mb in micro)
    n = sum(task.normalizer(mb) for mb in micro)
    return total / n, [ds[i] for i in range(a.batch)]


def trl_examples(samples) -> list[dict]:
    """Our packed samples as TRL packed rows: input_ids, labels (-100 off the loss; a label is the
    token itself, shifted by the model), seq_lengths (one per conversation; TRL's packing column)."""
    rows = []
    for x in samples:
        cu = x["cu_seqlens"].tolist()[:len(x["conversation_ids"]) + 1]
        end = cu[-1]
        ids = x["tokens"][:end].tolist()
        labels = [-100] * end
        for p in range(end - 1):  # our loss_mask[p] trains label tokens[p + 1]
            if x["loss_mask"][p]:
                labels[p + 1] = ids[p + 1]
        rows.append({"input_ids": ids, "labels": labels, "seq_lengths": [b - c for c, b in zip(cu, cu[1:])]})
    return rows


def trl_trainer(a, hf_dir, prefix, out_dir, steps, counts=None):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from megatron_th.data.sft_dataset import open_sft_data

    tokens, masks = open_sft_data(prefix)
    ids = [tokens.get(i).astype("int64").tolist() for i in range(len(tokens))]
    labels = [[t if m else -100 for t, m in zip(x, masks.get(i).tolist())] for i, x in enumerate(ids)]
    data = Dataset.from_dict({"input_ids": ids, "labels": labels})
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True)
    args = SFTConfig(output_dir=out_dir, max_length=a.seq, packing=True, packing_strategy="bfd",
                     per_device_train_batch_size=a.trl_micro_batch,
                     gradient_accumulation_steps=a.batch // a.trl_micro_batch, max_steps=steps,
                     learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                     max_grad_norm=1.0, logging_steps=10 ** 6, save_strategy="no", report_to="none", use_cpu=True,
                     dataloader_num_workers=0, seed=0, bf16=False, fp16=False, disable_tqdm=True)

    class Times(TrainerCallback):
        ends: list = []

        def on_step_end(self, *_, **__):
            self.ends.append(time.perf_counter())
    times = Times()
    times.ends = []
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, callbacks=[times])
    if counts is not None:
        collate = trainer.data_collator

        def counting(examples):
            batch = collate(examples)
            counts.append(int(batch["input_ids"].numel()))  # padding-free: every token is real
            return batch
        trainer.data_collator = counting
    return trainer, times


def trl_loss(a, hf_dir, prefix, samples, tmp) -> float:
    import torch

    trainer, _ = trl_trainer(a, hf_dir, prefix, os.path.join(tmp, "trl_check"), 1)
    inputs = trainer.data_collator(trl_examples(samples))
    trainer.model.eval()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, inputs))


def run_ours(a, argv, real_per_step):
    from megatron_th.config import parse_config
    from megatron_th.training.pretrain import pretrain

    log_dir = argv[argv.index("--log-dir") + 1]
    cfg, _ = parse_config(argv)
    pretrain(cfg, log=QUIET)
    recs = [json.loads(line) for line in open(os.path.join(log_dir, "metrics.jsonl"))]
    recs = [r for r in recs if "step_time" in r][a.warmup:]
    seconds = sum(r["step_time"] for r in recs)
    tokens = sum(real_per_step[r["iteration"] - 1] for r in recs)
    return tokens / seconds, tokens, seconds


def run_trl(a, hf_dir, prefix, out_dir):
    counts = []
    trainer, times = trl_trainer(a, hf_dir, prefix, out_dir, a.warmup + a.steps, counts)
    trainer.train()
    ends = times.ends
    seconds = ends[-1] - ends[a.warmup - 1] if a.warmup else None
    if seconds is None:
        raise SystemExit("error: --warmup must be at least 1 (a step's time starts at the previous step's end)")
    ga = a.batch // a.trl_micro_batch  # collator calls per step
    tokens = sum(counts[a.warmup * ga:(a.warmup + a.steps) * ga])
    return tokens / seconds, tokens, seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", help="an SFT prefix (PREFIX_tokens / PREFIX_loss_mask); default: the embedded "
                                       "chat set, preprocessed here")
    p.add_argument("--tokenizer-model", default=os.path.join(ROOT, "megatron_th", "assets", "tokenizer",
                                                             "th_en.model"))
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--query-groups", type=int, default=4)
    p.add_argument("--ffn", type=int, default=704)
    p.add_argument("--seq", type=int, default=512, help="packed sequence length (TRL's max_length)")
    p.add_argument("--batch", type=int, default=4, help="packed sequences per step (both sides, one micro-batch)")
    p.add_argument("--trl-micro-batch", type=int, help="TRL's per_device_train_batch_size (default --batch: "
                   "one padding-free row of --batch bins per step; 1: one bin per forward, accumulated over "
                   "--batch; TRL normalises over the accumulated tokens either way)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (at least 1)")
    p.add_argument("--runs", type=int, default=3, help="alternating runs per side (median reported)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--json", default="benchmarks/results/sft_throughput.json")
    a = p.parse_args()
    if a.warmup < 1:
        print("error: --warmup must be at least 1", file=sys.stderr)
        return 2
    a.trl_micro_batch = a.trl_micro_batch or a.batch
    if a.trl_micro_batch < 1 or a.batch % a.trl_micro_batch:
        print(f"error: --trl-micro-batch {a.trl_micro_batch} must divide --batch {a.batch}", file=sys.stderr)
        return 2
    try:
        import trl
    except ImportError:
        print("note: TRL is not installed (pip install trl): nothing to compare against, skipped")
        return 0
    import torch
    import transformers

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tmp = tempfile.mkdtemp(prefix="sft_throughput_")
    prefix = prepare_data(a, tmp)
    ck, hf_dir = initial_checkpoint(a, prefix, tmp)
    cache = os.path.join(tmp, "cache")
    iters = a.warmup + a.steps

    # 1. the same loss on one packed batch
    argv0 = our_argv(a, prefix, ck, cache, os.path.join(tmp, "check"), iters)
    ours, samples = our_loss(a, ck, argv0)
    theirs = trl_loss(a, hf_dir, prefix, samples, tmp)
    rel = abs(ours - theirs) / abs(theirs)
    convs = sum(len(x["conversation_ids"]) for x in samples)
    print(f"loss on one packed batch ({a.batch} x {a.seq} tokens, {convs} conversations): megatron_th {ours:.7f}, "
          f"TRL {theirs:.7f}, relative difference {rel:.2e}", flush=True)
    if rel > 1e-5:
        print("error: the losses differ by more than 1e-5: the comparison would not be of the same computation",
              file=sys.stderr)
        return 1

    # 2. throughput, alternating
    _, _, _, ds = our_dataset_and_task(argv0)
    if len(ds) < iters * a.batch:
        print(f"error: the data holds {len(ds)} packed sequences, fewer than {iters} steps x {a.batch}",
              file=sys.stderr)
        return 2
    sizes = ds.tokens.sizes
    real = [int(sum(sizes[ds.conversations(i)].sum() for i in range(k * a.batch, (k + 1) * a.batch)))
            for k in range(iters)]
    print(f"our packing efficiency {ds.packing_efficiency:.2%} (non-pad tokens); {a.runs} alternating runs of "
          f"{a.warmup} + {a.steps} steps, {a.threads} threads", flush=True)
    rows = []
    for r in range(a.runs):
        for side in ("megatron_th", "trl"):
            out = os.path.join(tmp, f"{side}_{r}")
            if side == "megatron_th":
                tps, tokens, sec = run_ours(a, our_argv(a, prefix, ck, cache, out, iters), real)
            else:
                tps, tokens, sec = run_trl(a, hf_dir, prefix, out)
            rows.append({"run": r, "impl": side, "tokens_per_sec": tps, "real_tokens": tokens, "seconds": sec})
            print(f"run {r} {side:12s} {tps:9.0f} real tok/s ({tokens} tokens in {sec:.2f} s)", flush=True)
    med = {s: statistics.median(x["tokens_per_sec"] for x in rows if x["impl"] == s) for s in ("megatron_th", "trl")}
    ratios = [rows[2 * r]["tokens_per_sec"] / rows[2 * r + 1]["tokens_per_sec"] for r in range(a.runs)]
    ratio = statistics.median(ratios)
    print("\n| implementation | real tokens/s (median) | vs TRL |")
    print("|---|---|---|")
    print(f"| megatron_th --sft | {med['megatron_th']:.0f} | {ratio:.2f}x (median of per-run ratios "
          f"{', '.join(f'{x:.2f}' for x in ratios)}) |")
    layout = (f"{a.batch} bins per padding-free row" if a.trl_micro_batch == a.batch else
              f"{a.trl_micro_batch} bin(s) per row, {a.batch // a.trl_micro_batch} accumulation steps")
    print(f"| TRL {trl.__version__} SFTTrainer (packing=bfd, {layout}) | {med['trl']:.0f} | 1.00x |")
    print(f"goal >= 1.0x: {'met' if ratio >= 1.0 else 'NOT met'}")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json + ".tmp", "w") as f:
        json.dump({"config": vars(a), "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                                                   "torch": torch.__version__},
                   "loss_check": {"megatron_th": ours, "trl": theirs, "relative": rel},
                   "packing_efficiency": ds.packing_efficiency, "rows": rows, "median_tokens_per_sec": med,
                   "ratios": ratios, "ratio": ratio}, f, indent=1)
    os.replace(a.json + ".tmp", a.json)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
