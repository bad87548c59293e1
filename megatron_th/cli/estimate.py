"""Estimate a pretraining run before renting GPUs: parameters; FLOPs per token and iteration (MFU
and HFU), time, GPU-hours and cost; memory per GPU by component (weights, gradients, optimizer,
activations with the pipeline's in-flight micro-batches, logits) and whether it fits, else the
smallest change that does; checkpoint size; the Chinchilla loss and compute-optimal size.

    megatron-th-estimate --config examples/llama_7b_4xa100.yaml     # or: python tools/estimate.py ...
    megatron-th-estimate --config examples/llama_7b_4xa100.yaml --gpus 16 --gpu h100-80g \\
        --tensor-model-parallel-size 4 --train-tokens 1e11 --price-per-gpu-hour 2.5 --json

Takes the same flags and YAML as pretrain_gpt.py (a flag overrides the file), plus the settings
below, which may also sit in the YAML under an ``estimate:`` section (training ignores it). The
vocabulary size comes from --vocab-size (the training flag; also accepted as ``vocab_size`` in the
``estimate:`` section), else the tokenizer (--tokenizer-model, default the embedded one). Formulas
and sources: docs/estimate.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from megatron_th.cli.parser import ArgumentParser

# setting -> (type, default, help)
SETTINGS = {
    "gpus": (int, None, "Number of GPUs (world size). Default: TP x PP (data-parallel size 1)."),
    "gpu": (str, "a100-80g", "GPU type, for peak TFLOP/s and memory: a100-40g, a100-80g, h100-pcie, h100-80g, "
                             "h200, l40s, a10, v100-32g, v100-16g."),
    "train_tokens": (float, None, "Tokens to train on. Default: --train-iters x --global-batch-size x --seq-length."),
    "mfu": (float, 0.4, "Assumed model FLOPs utilisation (0-1) for time and cost."),
    "price_per_gpu_hour": (float, None, "Price of one GPU-hour, for the cost."),
    "memory_headroom": (float, 0.1, "Fraction of GPU memory kept free (CUDA context, NCCL buffers, fragmentation)."),
    "kernels": (str, "cuda", "Whose kernels' saved activations to count: cuda (bool dropout masks, flash attention, "
                             "fused RMSNorm) or cpu (what this machine measures)."),
}


def add_flags(p: argparse.ArgumentParser) -> None:
    """Adds the estimate settings to the training parser (which names itself pretrain_gpt.py)."""
    p.prog = os.path.basename(sys.argv[0])  # argparse's default: the command that was run
    p.description = __doc__.split("\n\n")[0]
    g = p.add_argument_group("estimate (flags, or keys of the YAML section `estimate:`)")
    for name, (tp, _, doc) in SETTINGS.items():
        g.add_argument("--" + name.replace("_", "-"), type=tp, help=doc.replace("%", "%%"),
                       choices=["cuda", "cpu"] if name == "kernels" else None)
    g.add_argument("--json", action="store_true", help="Print the estimate as JSON instead of the table.")


def settings(argv, ns: argparse.Namespace) -> dict:
    """Defaults < the YAML's estimate: section < flags."""
    from megatron_th.config import ESTIMATE_SECTION, ConfigError, read_yaml

    out = {k: d for k, (_, d, _) in SETTINGS.items()}
    pre = ArgumentParser(add_help=False)
    pre.add_argument("--config")
    path = pre.parse_known_args(argv)[0].config
    if path:
        section = read_yaml(path).get(ESTIMATE_SECTION) or {}
        for k, v in section.items():
            if k == "vocab_size":  # the estimate section's older home of what is now --vocab-size
                out[k] = int(v) if v is not None else None
                continue
            if k not in SETTINGS:
                raise ConfigError(f"--config {path}: unknown key {k!r} in section {ESTIMATE_SECTION} "
                                  f"(known: {', '.join(SETTINGS)})")
            try:
                out[k] = SETTINGS[k][0](v) if v is not None else None
            except (TypeError, ValueError):
                raise ConfigError(f"--config {path}: {ESTIMATE_SECTION}.{k} must be {SETTINGS[k][0].__name__}, "
                                  f"got {v!r}") from None
    for k in SETTINGS:
        if hasattr(ns, k):
            out[k] = getattr(ns, k)
    return out


def vocab_from_tokenizer(cfg) -> int:
    """The vocabulary size of --tokenizer-model (default the embedded tokenizer); ValueError if unreadable."""
    from megatron_th.data.embedded import DEFAULT_TOKENIZER
    from megatron_th.data.tokenizer import load_tokenizer

    spec = cfg.data.tokenizer_model or DEFAULT_TOKENIZER
    try:
        return load_tokenizer(spec).vocab_size
    except (OSError, ImportError, ValueError) as e:
        raise ValueError(f"--tokenizer-model {spec}: cannot read it ({e}); pass --vocab-size instead") from None


def main(argv=None) -> int:
    """The command (``argv`` defaults to sys.argv[1:]); returns the exit status: 0, or 2 on a bad flag, config or tokenizer,
    printed as one ``error: ...`` line on stderr."""
    from megatron_th.config import ConfigError, parse_config

    try:
        cfg, ns = parse_config(argv, extra=add_flags)
        opts = settings(sys.argv[1:] if argv is None else argv, ns)
        if opts["gpus"] is not None and opts["gpus"] < 1:  # 0 is not "the default" (TP x PP)
            raise ConfigError(f"--gpus {opts['gpus']} must be >= 1 (a multiple of --tensor-model-parallel-size x "
                              f"--pipeline-model-parallel-size)")
        vocab = cfg.model.vocab_size or opts.get("vocab_size") or vocab_from_tokenizer(cfg)
        from megatron_th.estimate import estimate, format_report

        est = estimate(cfg, gpus=opts["gpus"], gpu=opts["gpu"], vocab_size=vocab, train_tokens=opts["train_tokens"],
                       mfu=opts["mfu"], price_per_gpu_hour=opts["price_per_gpu_hour"], device=opts["kernels"],
                       headroom=opts["memory_headroom"])
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(est, indent=1) if getattr(ns, "json", False) else format_report(est))
    return 0


if __name__ == "__main__":
    sys.exit(main())
