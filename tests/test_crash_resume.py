"""kill -9 at seeded random moments (many during a save): the last complete checkpoint always
loads, and the run that finally finishes ends bitwise where an uninterrupted run ends."""
import os
import random
import signal
import subprocess
import sys

import torch

from megatron_th.training.checkpoint import CheckpointReader, find_checkpoint
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
