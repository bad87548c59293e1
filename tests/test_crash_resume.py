"""kill -9 at seeded random moments (many during a save): the last complete checkpoint always
loads, and the run that finally finishes ends bitwise where an uninterrupted run ends; its
metrics.jsonl logs each iteration once, with the uninterrupted run's losses."""
import json
import os
import random
import signal
import subprocess
import sys

import torch

from megatron_th.training.checkpoint import CheckpointReader, find_checkpoint
from megatron_th.training.metrics import supersede_after
from tests.test_training import data_prefix  # noqa: F401  (the shared synthetic dataset fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cmd(prefix, save):
    return [sys.executable, os.path.join(ROOT, "pretrain_gpt.py"), "--num-layers", "2", "--hidden-size", "64",
            "--num-attention-heads", "4", "--seq-length", "64", "--micro-batch-size", "2", "--global-batch-size",
            "4", "--data-path", prefix, "--data-cache-path", os.path.join(save, "..", "cache"), "--train-iters",
            "300", "--lr-decay-iters", "300", "--save", save, "--load", save, "--save-interval", "1",
            "--keep-last", "2", "--log-interval", "1", "--hidden-dropout", "0.1", "--num-threads", "1"]


def final_tensors(save):
    r = CheckpointReader(find_checkpoint(save))
    assert r.meta["iteration"] == 300
    return {n: r.read(n) for n in r.tensors if not n.startswith("rng.")}


def test_kill_minus_9_never_corrupts_and_resume_is_exact(data_prefix, tmp_path):
    ref_dir = str(tmp_path / "ref")
    subprocess.run(cmd(data_prefix, ref_dir), check=True, capture_output=True, timeout=300)
    reference = final_tensors(ref_dir)

    save = str(tmp_path / "crashy")
    rnd = random.Random(1234)
    kills = 0
    while True:
        proc = subprocess.Popen(cmd(data_prefix, save), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        delay = rnd.uniform(2.0, 3.5) if kills < 6 else None
        try:
            proc.wait(timeout=delay if delay is not None else 300)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            path = find_checkpoint(save)
            if path is not None:  # whatever the moment, the last complete checkpoint loads whole
                r = CheckpointReader(path)
                for n in r.tensors:
                    r.read(n)
            continue
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        break
    assert kills == 6
    leftovers = [d for d in os.listdir(save) if d.endswith(".tmp")]
    assert len(leftovers) <= 1  # at most the save that a kill interrupted, never loaded
    resumed = final_tensors(save)
    assert resumed.keys() == reference.keys()
    for n in reference:
        assert torch.equal(resumed[n], reference[n]), n
    # each iteration logged once, in order, with the uninterrupted run's loss; what a killed run
    # logged past its last checkpoint moved to metrics.jsonl.superseded when the next run resumed
    ref_losses = [(r["iteration"], r["lm_loss"]) for r in _records(os.path.join(ref_dir, "logs", "metrics.jsonl"))]
    assert [(r["iteration"], r["lm_loss"]) for r in _records(os.path.join(save, "logs", "metrics.jsonl"))] == ref_losses
    superseded = os.path.join(save, "logs", "metrics.jsonl.superseded")
    for r in _records(superseded) if os.path.exists(superseded) else []:
        assert (r["iteration"], r["lm_loss"]) == ref_losses[r["iteration"] - 1], r  # a repeat, bitwise


def _records(path):
    with open(path, encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if "lm_loss" in r]


def test_supersede_after_moves_what_a_resume_repeats(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    lines = [json.dumps({"iteration": i, "lm_loss": float(i)}) + "\n" for i in range(1, 6)]
    lines.insert(3, json.dumps({"split": "valid", "iteration": 3, "loss": 0.5}) + "\n")
    with open(path, "w") as f:
        f.writelines(lines + ['{"iteration": 6, "lm_lo'])  # the last write torn by a kill
    assert supersede_after(path, 3) == 3
    with open(path) as f:
        assert f.readlines() == lines[:4]  # iterations 1-3 and the valid record of 3
    with open(path + ".superseded") as f:
        assert f.readlines() == lines[4:] + ['{"iteration": 6, "lm_lo\n']
    assert supersede_after(path, 3) == 0 and supersede_after(str(tmp_path / "none.jsonl"), 3) == 0
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "metrics.jsonl.superseded"]  # no temporary left
