#!/usr/bin/env python
"""Plot loss, learning rate and throughput from one or more metrics.jsonl files into a PNG.

The loss panel draws the training loss and one line per evaluation split the log holds, by its
name: ``valid``, and ``valid_ema`` with --eval-ema (docs/optimizers.md)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without pip install
from megatron_th.cli.parser import ArgumentParser  # noqa: E402


def read_metrics(path: str) -> tuple[list[dict], dict[str, list[dict]]]:
    """(training records, {split: evaluation records}) of a metrics.jsonl, in file order; an
    evaluation record is one with a ``split`` key (``valid``, ``valid_ema``, ...). ValueError
    naming ``path:line`` for a line that is not JSON."""
    train, evals = [], {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{n}: not a JSON line") from None
            if rec.get("split"):
                evals.setdefault(str(rec["split"]), []).append(rec)
            else:
                train.append(rec)
    return train, evals


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("metrics", nargs="+", help="metrics.jsonl files (or run directories containing logs/metrics.jsonl)")
    p.add_argument("--output", default="training_curves.png", help="PNG to write")
    a = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for path in a.metrics:
        if os.path.isdir(path):
            path = os.path.join(path, "logs", "metrics.jsonl") if os.path.isdir(os.path.join(path, "logs")) else os.path.join(path, "metrics.jsonl")
        try:
            train, evals = read_metrics(path)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        label = os.path.basename(os.path.dirname(os.path.abspath(path)))
        it = [r["iteration"] for r in train]
        axes[0].plot(it, [r["lm_loss"] for r in train], label=f"{label} train")
        for split, recs in evals.items():  # each split its own line: valid, valid_ema, ...
            recs = [r for r in recs if "lm_loss" in r]
            if recs:
                axes[0].plot([r["iteration"] for r in recs], [r["lm_loss"] for r in recs], "o--",
                             label=f"{label} {split}")
        axes[1].plot(it, [r["lr"] for r in train], label=label)
        axes[2].plot(it, [r["tokens_per_sec"] for r in train], label=label)
    for ax, title in zip(axes, ("lm loss", "learning rate", "tokens / s")):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.legend()
    fig.tight_layout()
    fig.savefig(a.output, dpi=100)
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
