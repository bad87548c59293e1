#!/usr/bin/env python
"""Peak memory of HF conversion, both ways, against the model size and the shard size.

    python benchmarks/convert_memory.py [--hidden 1024 --layers 12] [--shard-mb 64]

Builds a Llama-style fp32 model (default about 190M parameters, 0.7 GiB) with the embedded
tokenizer, saves it as a weights-only checkpoint, then runs each step in a fresh process and
records that process's peak resident memory (``ru_maxrss``) above its baseline after imports:

- export: ``tools/convert_to_hf.py`` with ``--max-shard-size``;
- import: ``tools/convert_from_hf.py`` of that export, same shard size.

Streaming means the extra memory is about one shard plus one tensor, whatever the model size.
(A baseline through ``from_pretrained`` is not shown: transformers 5 maps the files lazily, so
its resident memory says little about what a converter materialises.)

Prints a table and writes benchmarks/results/convert_memory.json. Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, "benchmarks", "results", "convert_memory.json")
MiB = 2 ** 20

_MEASURE = r"""
import os, resource, runpy, sys, json, time
sys.path.insert(0, {root!r})
import torch, transformers, safetensors  # noqa: F401 -- baseline after the imports every step pays
import megatron_th.convert.to_hf, megatron_th.convert.from_hf
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.time()
mode = sys.argv[1]
sys.argv = [mode] + sys.argv[2:]
try:
    runpy.run_path(mode, run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"base_kib": base, "peak_kib": peak, "seconds": time.time() - t0}}))
"""


def measure(*args) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE.format(root=ROOT), *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {"extra_mib": (r["peak_kib"] - r["base_kib"]) / 1024, "seconds": r["seconds"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--shard-mb", type=int, default=64)
    a = ap.parse_args()
    from megatron_th.config import Config, finalize
    from megatron_th.data.embedded import DEFAULT_TOKENIZER
    from megatron_th.data.tokenizer import load_tokenizer
    from megatron_th.model.gpt import build_model
    from megatron_th.training.resume import save_weights_only

    cfg = Config()
    for k, v in {"num_layers": a.layers, "hidden_size": a.hidden, "num_attention_heads": a.hidden // 64,
                 "num_query_groups": a.hidden // 256, "position_embedding_type": "rope", "normalization": "RMSNorm",
                 "swiglu": True, "disable_bias_linear": True, "untie_embeddings_and_output_weights": True}.items():
        setattr(cfg.model, k, v)
    finalize(cfg)
    vocab = load_tokenizer(DEFAULT_TOKENIZER).vocab_size
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(cfg.model, vocab, 0)
        n = sum(p.numel() for p in model.parameters())
        ck = os.path.join(tmp, "ck")
        save_weights_only(ck, 1, list(model.state_dict().items()), cfg.to_dict(), DEFAULT_TOKENIZER)
        size_mib = n * 4 / MiB
        biggest = max(p.numel() for p in model.parameters()) * 4 / MiB
        del model
        tools = os.path.join(ROOT, "tools")
        rows = {
            "export (ours)": measure(os.path.join(tools, "convert_to_hf.py"), "--load", ck, "--output",
                                     os.path.join(tmp, "hf"), "--max-shard-size", f"{a.shard_mb}MB"),
            "import (ours)": measure(os.path.join(tools, "convert_from_hf.py"), "--hf", os.path.join(tmp, "hf"),
                                     "--output", os.path.join(tmp, "back"), "--max-shard-size", f"{a.shard_mb}MB"),
        }
    print(f"model: {n / 1e6:.0f}M parameters, fp32 {size_mib:.0f} MiB; largest tensor {biggest:.0f} MiB; "
          f"export shards {a.shard_mb} MiB")
    print("| step | peak RSS above baseline (MiB) | / model size | seconds |\n|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r['extra_mib']:.0f} | {r['extra_mib'] / size_mib:.2f} | {r['seconds']:.1f} |")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"params": n, "model_mib": size_mib, "largest_tensor_mib": biggest, "shard_mib": a.shard_mb,
                   "rows": rows, "time": time.time()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
