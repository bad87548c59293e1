#!/usr/bin/env python
"""Describe a checkpoint: iteration, tokens seen, the layout it was saved from, parameter counts,
size on disk, and a check that every logical tensor is exactly covered by its slices."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_th.cli.parser import ArgumentParser  # noqa: E402


def coverage_problems(reader) -> list[str]:
    """Logical tensors whose slices leave a gap, overlap, or fall outside the tensor."""
    problems = []
    for name, e in reader.tensors.items():
        full = e["shape"]
        total = 1
        for n in full:
            total *= n
        covered = 0
        boxes = []
        for s in e["slices"]:
            vol = 1
            for off, n, lim in zip(s["offset"], s["shape"], full):
                if off < 0 or off + n > lim:
                    problems.append(f"{name}: slice at {s['offset']} of shape {s['shape']} exceeds {full}")
                vol *= n
            covered += vol
            boxes.append(s)
        for i, a in enumerate(boxes):  # pairwise overlap
            for b in boxes[i + 1:]:
                if all(x < y + m and y < x + n for x, n, y, m in zip(a["offset"], a["shape"], b["offset"], b["shape"])):
                    problems.append(f"{name}: slices at {a['offset']} and {b['offset']} overlap")
        if covered != total and not any("overlap" in p for p in problems if p.startswith(name)):
            problems.append(f"{name}: slices cover {covered} of {total} elements")
    return problems


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("load", help="checkpoint directory (its `latest`) or one iter_* directory")
    p.add_argument("--iteration", type=int)
    a = p.parse_args(argv)
    from megatron_th.training.checkpoint import CheckpointError, CheckpointReader
    from megatron_th.training.resume import open_checkpoint

    try:
        if os.path.isfile(os.path.join(a.load, "metadata.json")):
            reader = CheckpointReader(a.load)
        else:
            reader = open_checkpoint(a.load, a.iteration)
    except (FileNotFoundError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    meta = reader.meta
    cfg, state, layout = meta["config"], meta.get("state", {}), meta.get("layout", {})
    seq = cfg["model"]["seq_length"]
    model = {n: e for n, e in reader.tensors.items() if not n.startswith(("optim.", "rng."))}
    optim = {n: e for n, e in reader.tensors.items() if n.startswith("optim.")}

    def count(entries):
        total = 0
        for e in entries.values():
            n = 1
            for d in e["shape"]:
                n *= d
            total += n
        return total

    disk = sum(os.path.getsize(os.path.join(reader.path, f)) for f in os.listdir(reader.path))
    emb = count({n: e for n, e in model.items() if "embedding" in n or n == "output_layer.weight"})
    print(f"checkpoint       {reader.path}")
    print(f"iteration        {meta['iteration']}")
    print(f"samples / tokens {state.get('consumed_samples', 0)} samples, {state.get('consumed_samples', 0) * seq:,} tokens")
    print(f"saved layout     TP {layout.get('tp')} x PP {layout.get('pp')} x DP {layout.get('dp')}")
    print(f"parameters       {count(model):,} ({emb:,} in embeddings / output layer)")
    print(f"optimizer state  {len(optim)} tensors, {count(optim):,} elements, step {meta.get('optimizer', {}).get('step')}")
    print(f"size on disk     {disk / 2**20:.1f} MiB in {len(os.listdir(reader.path))} files")
    problems = coverage_problems(reader)
    if problems:
        for msg in problems[:20]:
            print(f"error: {msg}", file=sys.stderr)
        return 1
    print(f"coverage         every one of {len(reader.tensors)} logical tensors is exactly covered by its slices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
