"""Export a megatron_th checkpoint (saved at any TP/PP/DP layout) as a Hugging Face model directory.

    megatron-th-convert-to-hf --load runs/tiny --output hf_tiny      # or: python tools/convert_to_hf.py ...
    python -c "from transformers import AutoModelForCausalLM, AutoTokenizer; \\
               m = AutoModelForCausalLM.from_pretrained('hf_tiny'); t = AutoTokenizer.from_pretrained('hf_tiny')"

A model imported with convert_from_hf goes back as it came: the base's config.json and
generation_config.json are written back (only torch_dtype/dtype change, with --dtype), after a
check that the checkpoint's architecture is still the base's, and its tokenizer files are copied
unchanged (chat template included); every embedding row it had is kept. Other checkpoints get a
generated config.json whose architecture follows the model options: LlamaForCausalLM (RoPE +
RMSNorm + SwiGLU, any RoPE scaling), Qwen2ForCausalLM (--add-qkv-bias), Qwen3ForCausalLM
(--qk-layernorm), MistralForCausalLM (a window on every layer, or on request),
Gemma3ForCausalLM (--apply-layernorm-1p, sandwich norms, GeGLU or scaled embeddings), GPT2LMHeadModel
(learned positions + LayerNorm + GeLU). Writes config.json, generation_config.json, sharded
safetensors (+ index) and the tokenizer, whose ids AutoTokenizer must reproduce; the vocabulary
padding is dropped. See docs/conversion.md.
"""
import argparse
import sys

from megatron_th.cli.parser import ArgumentParser


def main(argv=None) -> int:
    """The command (``argv`` defaults to sys.argv[1:]); returns the exit status: 0, or 1 on a bad checkpoint or output,
    printed as one ``error: ...`` line on stderr."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="checkpoint directory (its `latest`, or --iteration)")
    p.add_argument("--iteration", type=int, help="export this saved iteration instead of the latest")
    p.add_argument("--output", required=True, help="HF model directory to write (built in OUTPUT.tmp, then renamed)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"],
                   help="weight dtype (default: the checkpoint's; fp32 masters are used when present)")
    p.add_argument("--architecture", choices=["llama", "mistral", "qwen2", "qwen3", "gpt2", "gemma3_text"],
                   help="force an architecture the model fits (e.g. mistral for a bias-free Llama)")
    p.add_argument("--ema", action="store_true",
                   help="export the EMA of the weights (--ema-decay; optim.ema.*) instead of the weights")
    p.add_argument("--fresh-config", action="store_true",
                   help="an imported model: generate config.json from the checkpoint's options instead of "
                        "writing the base's back")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    a = p.parse_args(argv)
    from megatron_th.convert.hf_arch import ConversionError
    from megatron_th.convert.hf_files import parse_size
    from megatron_th.convert.to_hf import export_to_hf
    from megatron_th.training.checkpoint import CheckpointError

    try:
        export_to_hf(a.load, a.output, a.iteration, a.dtype, a.architecture, parse_size(a.max_shard_size), a.overwrite,
                     fresh_config=a.fresh_config, ema=a.ema)
    except (ConversionError, CheckpointError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
