#!/usr/bin/env python
"""Generate text from a checkpoint: greedy by default, or sampled with --temperature/--top-k/--top-p."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_th.cli.parser import ArgumentParser  # noqa: E402


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--load", required=True, help="checkpoint directory (uses its `latest`)")
    p.add_argument("--iteration", type=int, help="a specific saved iteration")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ids", action="store_true", help="also print the generated token ids")
    a = p.parse_args(argv)
    from megatron_th.inference import generate, load_for_inference

    try:
        model, tok, _ = load_for_inference(a.load, a.iteration)
    except (FileNotFoundError, RuntimeError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    new = generate(model, tok.encode(a.prompt), a.max_new_tokens, tok.eod, a.temperature, a.top_k, a.top_p,
                   a.repetition_penalty, a.seed)
    text = tok.decode([i for i in new if i != tok.eod])
    print(a.prompt + text)
    if a.ids:
        print(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
