#!/usr/bin/env python
"""Peak memory of the LM loss (forward + backward), unchunked (before issue 15) against chunked.

    python benchmarks/loss_memory.py [--vocab 152064 --seq 4096 --micro-batch 1 --hidden 1024]
                                     [--dtype bf16 fp32] [--tp 1 2 8] [--device meta|cpu]

For each dtype and TP size, runs the head's loss on hidden states x [b, s, h] and a head weight
[V_padded/tp, h] (the rows one TP rank holds), then backward, and counts every tensor the
dispatcher allocates in between (a TorchDispatchMode: megatron_th/utils/alloc_trace.py), with
its lifetime (a weak reference on its storage):

- ``peak``: the high-water mark of bytes allocated inside the block and still live (what the
  loss adds to memory; x, the weight and their final gradients included);
- ``largest``: the largest single allocation;
- ``full fp32 logits``: b*s*V_local*4, what the chunking avoids; ``ratio``: unchunked peak /
  chunked peak.

Paths: ``unchunked`` is the code before chunking (model/loss.py unchunked_cross_entropy at TP=1;
full local logits + parallel/layers.py _VocabParallelCE at TP>1); ``chunked`` is what the model
runs now (lm_cross_entropy / vocab_parallel_lm_loss with the default chunk, LOSS_CHUNK_BYTES of
fp32 logits). TP>1 runs one rank's share in a single process (no process group: the statistics
are not merged, which changes values, not memory).

``--device meta`` (default) counts the same allocations without memory or compute, so the full
size runs in a second on any machine; ``--device cpu`` computes for real (the unchunked fp32 case
at the default size needs about 10 GiB). Prints a table and writes
benchmarks/results/loss_memory.json. Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, "benchmarks", "results", "loss_memory.json")
MiB = 2 ** 20

import torch  # noqa: E402

from megatron_th.utils.alloc_trace import record_live_bytes  # noqa: E402


def loss_fn(path: str, tp: int):
    """The loss as (x, weight_shard, labels, true_vocab) -> fp32 [b, s], one TP rank's share."""
    import torch.nn.functional as F

    from megatron_th.model.loss import lm_cross_entropy, unchunked_cross_entropy
    from megatron_th.parallel.layers import vocab_parallel_cross_entropy, vocab_parallel_lm_loss

    if tp == 1:
        return unchunked_cross_entropy if path == "unchunked" else lm_cross_entropy
    if path == "unchunked":
        return lambda x, w, labels, v: vocab_parallel_cross_entropy(F.linear(x, w), labels, None, 0, v)
    return lambda x, w, labels, v: vocab_parallel_lm_loss(x, w, labels, None, 0, v)


def measure(path: str, dtype: torch.dtype, tp: int, a) -> dict:
    """Peak live and largest allocation (bytes) of one forward + backward of the loss."""
    from megatron_th.data.tokenizer import padded_vocab_size

    padded = padded_vocab_size(a.vocab, 128 * tp)
    b, s, h, rows = a.micro_batch, a.seq, a.hidden, padded // tp
    if torch.device(a.device).type == "meta":  # shapes only: nothing to draw
        x, w = torch.empty(b, s, h, device="meta", dtype=dtype), torch.empty(rows, h, device="meta", dtype=dtype)
        labels = torch.empty(b, s, device="meta", dtype=torch.long)
    else:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(b, s, h, generator=gen).to(a.device, dtype)
        w = (torch.randn(rows, h, generator=gen) / h ** 0.5).to(a.device, dtype)
        labels = torch.randint(0, a.vocab, (b, s), generator=gen).to(a.device)
    x.requires_grad_(True)
    w.requires_grad_(True)
    fn = loss_fn(path, tp)
    with record_live_bytes(a.device) as rec:
        loss = fn(x, w, labels, min(a.vocab, padded // tp))
        loss.sum().backward()
        del loss
    return {"path": path, "dtype": str(dtype).replace("torch.", ""), "tp": tp, "peak_bytes": rec.peak_bytes,
            "largest_bytes": rec.max_bytes, "largest_op": rec.largest().op,
            "full_logits_fp32_bytes": b * s * rows * 4}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=152064, help="true vocabulary (padded to 128*tp)")
    ap.add_argument("--seq", type=int, default=4096, help="tokens per sequence (--seq-length)")
    ap.add_argument("--micro-batch", type=int, default=1, help="sequences (--micro-batch-size)")
    ap.add_argument("--hidden", type=int, default=1024, help="hidden size h")
    ap.add_argument("--dtype", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--tp", nargs="+", type=int, default=[1, 2, 8], help="TP sizes (one rank's share each)")
    ap.add_argument("--device", default="meta", help="meta (count only, default) or cpu/cuda (compute)")
    ap.add_argument("--json", default=RESULTS, help="where to write the results")
    a = ap.parse_args()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    rows = []
    for name in a.dtype:
        for tp in a.tp:
            pair = [measure(path, dtypes[name], tp, a) for path in ("unchunked", "chunked")]
            pair[1]["ratio"] = pair[0]["peak_bytes"] / max(1, pair[1]["peak_bytes"])
            for r in pair:
                r["dtype"] = name
            rows += pair
    print(f"LM loss forward+backward, vocab {a.vocab}, seq {a.seq}, micro-batch {a.micro_batch}, "
          f"hidden {a.hidden}, device {a.device} (MiB, per TP rank)")
    head = f"{'dtype':>5} {'tp':>3} {'path':>10} {'peak':>9} {'largest':>9} {'full fp32 logits':>17} {'ratio':>6}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        ratio = f"{r['ratio']:.1f}x" if "ratio" in r else ""
        print(f"{r['dtype']:>5} {r['tp']:>3} {r['path']:>10} {r['peak_bytes'] / MiB:>9.1f} "
              f"{r['largest_bytes'] / MiB:>9.1f} {r['full_logits_fp32_bytes'] / MiB:>17.1f} {ratio:>6}")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    tmp = a.json + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"vocab": a.vocab, "seq": a.seq, "micro_batch": a.micro_batch, "hidden": a.hidden,
                   "device": a.device, "rows": rows}, fh, indent=1)
    os.replace(tmp, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
