#!/usr/bin/env python
"""`make demo`: pretrain the tiny model on the embedded corpus with torchrun, then generate.

Checks what a user would: the run finished, the loss fell by more than 1 nat, a checkpoint exists,
and the model continues a Thai prompt.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # a checkout without pip install
from megatron_th.cli.parser import ArgumentParser  # noqa: E402


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--save", default=os.path.join(ROOT, "runs", "demo"), help="run directory")
    p.add_argument("--nproc", type=int, default=8, help="processes (world size); 8 = TP 2 x PP 2 x DP 2")
    p.add_argument("--min-drop", type=float, default=1.0, help="fail unless the loss fell by more than this (nats)")
    p.add_argument("--prompt", default="ประเทศไทยมี")
    p.add_argument("--fresh", action="store_true", help="delete an earlier run in --save first")
    p.add_argument("extra", nargs="*", help="more pretrain_gpt.py flags (after --)")
    a = p.parse_args(argv)
    if a.fresh and os.path.isdir(a.save):
        import shutil
        shutil.rmtree(a.save)
    threads = max(1, (os.cpu_count() or 2) // a.nproc)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(threads)))
    layout = []
    if a.nproc % 8 == 0:
        layout = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                  "--use-distributed-optimizer", "--sequence-parallel"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(a.nproc),
           os.path.join(ROOT, "pretrain_gpt.py"), "--config", os.path.join(ROOT, "examples", "tiny.yaml"),
           *layout, "--num-threads", str(threads), "--save", a.save, "--load", a.save, *a.extra]
    print("$ " + " ".join(cmd[2:]), flush=True)
    if subprocess.call(cmd, env=env) != 0:
        print("demo: training failed", file=sys.stderr)
        return 1
    with open(os.path.join(a.save, "logs", "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    train = [r for r in recs if "split" not in r]
    first, last = train[0]["lm_loss"], train[-1]["lm_loss"]
    print(f"\ndemo: loss {first:.3f} -> {last:.3f} over {train[-1]['iteration']} iterations "
          f"(fell by {first - last:.2f} nats); checkpoint in {a.save}")
    gen = [sys.executable, os.path.join(ROOT, "tools", "generate.py"), "--load", a.save, "--prompt", a.prompt,
           "--max-new-tokens", "40", "--temperature", "0.7", "--top-p", "0.9", "--repetition-penalty", "1.3"]
    # sampled: a 5M-parameter model after two minutes of training repeats itself under greedy decoding
    print("$ " + " ".join(gen[1:]), flush=True)
    if subprocess.call(gen) != 0:
        return 1
    if first - last <= a.min_drop:
        print(f"demo: the loss did not fall by more than {a.min_drop} nats", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
