"""Average the weights of several saved iterations into one weights-only checkpoint.

    python tools/average_checkpoints.py --load runs/base --iterations 3000,4000,5000 --weights 1,1,2 \\
        --output runs/base_avg
    python tools/convert_to_hf.py --load runs/base_avg --output hf_avg        # or train on: --load ... --finetune

The weights are normalised to sum 1; each tensor is the weighted mean of the inputs' fp32 masters
where the checkpoints have them (16-bit training), else of their weights, accumulated in fp64. The
inputs may have been saved at any TP/PP/DP layout, and the output loads at any layout. Tensors are
read, averaged and written one at a time. The output holds weights only: train on with --finetune.
See docs/optimizers.md.
"""
import argparse
import sys

from megatron_th.cli.parser import ArgumentParser


def _numbers(text: str, kind) -> list:
    """``"1,2,3"`` as a list of ``kind``; argparse.ArgumentTypeError (argparse prefixes the flag)."""
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None


def main(argv=None) -> int:
    """The command; returns 0, or 1 with one ``error: ...`` line on stderr (a malformed flag: exit 2,
    cli/parser.py)."""
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="checkpoint directory holding the iter_* to average")
    p.add_argument("--iterations", required=True, type=lambda s: _numbers(s, int),
                   help="comma-separated saved iterations, e.g. 3000,4000,5000")
    p.add_argument("--weights", type=lambda s: _numbers(s, float),
                   help="comma-separated weights, one per iteration (default: equal); normalised to sum 1")
    p.add_argument("--output", required=True,
                   help="new (or empty) checkpoint directory to write (iter_<last> and latest); not inside --load "
                        "or any other checkpoint directory")
    p.add_argument("--max-shard-size", default="0",
                   help="group tensors into safetensors shards of about this size, e.g. 1GB (default 0: one tensor "
                        "per shard, memory near one tensor)")
    a = p.parse_args(argv)
    from megatron_th.convert.hf_files import parse_size
    from megatron_th.training.average import AverageError, average_checkpoints
    from megatron_th.training.checkpoint import CheckpointError

    try:
        average_checkpoints(a.load, a.iterations, a.output, a.weights, parse_size(a.max_shard_size))
    except (AverageError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
