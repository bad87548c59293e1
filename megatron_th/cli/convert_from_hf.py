"""Import a Hugging Face model (Llama 1/2/3.x, Mistral, Qwen2/2.5, Qwen3, Gemma 3 text, GPT-2) as a megatron_th
checkpoint.

    megatron-th-convert-from-hf --hf models/Llama-3.2-1B --output ck_llama   # or: python tools/convert_from_hf.py ...
    torchrun --nproc-per-node 8 pretrain_gpt.py --load ck_llama --use-checkpoint-args \\
        --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --data-path ... --save ck_thai
    megatron-th-convert-to-hf --load ck_thai --output llama-3.2-1b-thai   # the base's config.json and tokenizer back

--hf is a local directory: config.json, model.safetensors or a sharded model.safetensors.index.json
(read one tensor at a time, never the whole model), the tokenizer files. The checkpoint is
topology-free: load it at any TP/PP/DP. It holds the weights (every embedding row the file has),
the tokenizer (the HF files, used as hf:<dir>) and the base's config.json and
generation_config.json, which export writes back. Training starts at iteration 0 with a fresh
optimizer. Preprocess data with the same tokenizer: tools/preprocess_data.py --tokenizer-model
hf:<the HF directory> --append-eod (EOD = the tokenizer's eos_token).

--extend-vocab NEW.model grows the vocabulary for continued pretraining in a new language: NEW.model
must keep every old piece at its id (tools/extend_tokenizer.py builds one from the model's
tokenizer.model and a Thai sentencepiece model); each added row of the embedding (and untied head)
starts as the mean of the rows of the old pieces that spell the new token. See docs/conversion.md.
"""
import argparse
import sys

from megatron_th.cli.parser import ArgumentParser


def main(argv=None) -> int:
    """The command (``argv`` defaults to sys.argv[1:]); returns the exit status: 0, or 1 on a bad model directory or output,
    printed as one ``error: ...`` line on stderr."""
    from megatron_th.convert import families

    p = ArgumentParser(description=__doc__, epilog=families.describe(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf", required=True, help="HF model directory (config.json, safetensors, tokenizer files)")
    p.add_argument("--output", required=True, help="checkpoint directory to write (use it as --load)")
    p.add_argument("--tokenizer-model", help="tokenizer to store instead of the HF one (sentencepiece .model or hf:<dir>)")
    p.add_argument("--extend-vocab", metavar="NEW.model", help="extended sentencepiece model: grow embedding and head")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="store weights in this dtype (default: as in the HF files)")
    p.add_argument("--seq-length", type=int, help="sequence length recorded in the config (default min(max positions, 4096))")
    p.add_argument("--max-shard-size", default="1GB", help="checkpoint shard size: memory holds about one (default 1GB)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    a = p.parse_args(argv)
    from megatron_th.convert.from_hf import import_from_hf
    from megatron_th.convert.hf_arch import ConversionError
    from megatron_th.convert.hf_files import parse_size

    try:
        import_from_hf(a.hf, a.output, a.tokenizer_model, a.extend_vocab, a.dtype, a.seq_length, a.overwrite,
                       parse_size(a.max_shard_size))
    except (ConversionError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
