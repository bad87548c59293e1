"""Issue 14 cases 5 and 6: a resume under any change Megatron allows continues correctly, and
checkpoint retention never removes the save just committed nor what ``latest`` names.

Single process, the tiny model of tests/test_training.py."""
import json
import os
import re
import time

import numpy as np
import pytest
import torch

from megatron_th.config import parse_config
from megatron_th.data.loader import PretrainingLoader
from megatron_th.training import pretrain as pt
from megatron_th.training import checkpoint as ckpt
from megatron_th.training.checkpoint import CheckpointReader, find_checkpoint, list_iterations
from tests.test_training import data_prefix, run, tiny_argv  # noqa: F401  (shared fixture)


def _gbs(argv, gbs):
    """tiny_argv with --global-batch-size replaced."""
    i = argv.index("--global-batch-size")
    return argv[:i + 1] + [str(gbs)] + argv[i + 2:]


def _recording(monkeypatch):
    """Records every sample id -> sample the training loader hands out."""
    seen = {}
    real = PretrainingLoader.next_global_batch

    def rec(self):
        for i in self.rank_sample_ids(self.consumed_samples):
            if i < len(self.dataset):
                seen[i] = np.asarray(self.dataset[i]).copy()
        return real(self)

    monkeypatch.setattr(PretrainingLoader, "next_global_batch", rec)
    return seen


def test_resume_with_another_global_batch_size_continues_the_same_sample_order(data_prefix, tmp_path, monkeypatch):
    """Case 5: 2 steps at GBS 8, then --load at GBS 4 to --train-iters 4 (was `StopIteration:
    dataset exhausted`: the split was sized train_iters x GBS = 16 < 16 + 2 x 4)."""
    ck = tmp_path / "ck"
    seen = _recording(monkeypatch)
    run(_gbs(tiny_argv(data_prefix, tmp_path, "--train-iters", "2", "--save", str(ck)), 8))
    first = dict(seen)
    seen.clear()
    logs = []
    res = run(tiny_argv(data_prefix, tmp_path, "--train-iters", "4", "--load", str(ck)), logs)
    assert res["state"]["iteration"] == 4 and res["state"]["consumed_samples"] == 16 + 2 * 4
    assert sorted(first) == list(range(16)) and sorted(seen) == list(range(16, 24))
    assert not [l for l in logs if l.startswith("warning")]  # nothing but the batch size changed
    resumed = dict(seen)
    # the order is the one an uninterrupted run at GBS 4 sees: samples 16..23 are its steps 5 and 6
    cfg, _ = parse_config(tiny_argv(data_prefix, tmp_path, "--train-iters", "6"))
    ref = pt.setup_data(cfg, log=lambda *a: None)[2]["train"]
    assert len(ref) == 24
    for i in range(24):
        assert np.array_equal(ref[i], first[i] if i < 16 else resumed[i]), i


def test_resume_across_precisions_starts_from_the_most_precise_weights(data_prefix, tmp_path):
    """16-bit <-> fp32: bf16 -> fp32 takes the fp32 masters (was: the bf16-rounded weights);
    fp32 -> bf16 takes fp32 masters from the fp32 weights; the fp16 loss scale is neither carried
    into a bf16/fp32 run nor a bf16 scale of 1 into an fp16 run."""
    ck = tmp_path / "bf16"
    run(tiny_argv(data_prefix, tmp_path, "--train-iters", "2", "--save", str(ck), "--bf16"))
    r = CheckpointReader(find_checkpoint(str(ck)))
    # --train-iters 2 = the saved iteration: the run loads, takes no step, returns the model
    res = run(tiny_argv(data_prefix, tmp_path, "--train-iters", "2", "--load", str(ck)))
    masters = 0
    for n, p in res["model"].named_parameters():
        assert p.dtype == torch.float32
        want = r.read(f"optim.master.{n}") if f"optim.master.{n}" in r.tensors else r.read(n).float()
        masters += f"optim.master.{n}" in r.tensors
        assert torch.equal(p.detach(), want), n
    assert masters > 0
    res16 = run(tiny_argv(data_prefix, tmp_path, "--train-iters", "2", "--load", str(ck), "--fp16",
                          "--initial-loss-scale", "4096"))
    assert res16["optimizer"].loss_scale == 4096.0  # fresh dynamic scaler, not bf16's 1.0
    for n, p in res16["model"].named_parameters():  # fp16 weights rounded from the masters
        if f"optim.master.{n}" in r.tensors:
            assert torch.equal(p.detach(), r.read(f"optim.master.{n}").half()), n

    ck32 = tmp_path / "fp32"
    run(tiny_argv(data_prefix, tmp_path, "--train-iters", "1", "--save", str(ck32), "--fp16",
                  "--initial-loss-scale", "4096"))
    res = run(tiny_argv(data_prefix, tmp_path, "--train-iters", "1", "--load", str(ck32), "--bf16"))
    assert res["optimizer"].loss_scale == 1.0  # bf16 never scales the loss
    ck_f = tmp_path / "f32"
    run(tiny_argv(data_prefix, tmp_path, "--train-iters", "1", "--save", str(ck_f)))
    r32 = CheckpointReader(find_checkpoint(str(ck_f)))
    res = run(tiny_argv(data_prefix, tmp_path, "--train-iters", "1", "--load", str(ck_f), "--bf16"))
    opt = res["optimizer"]
    for s in opt.slots:
        assert s.master.dtype == torch.float32
        assert torch.equal(s.master, r32.read(opt.names[s.index])), opt.names[s.index]


def test_resume_with_changed_data_settings_warns_once_and_continues(data_prefix, tmp_path):
    """Blend weights, data paths, --seq-length or --split changed: one warning line naming what
    changed; training continues from consumed_samples."""
    ck = tmp_path / "ck"
    run(tiny_argv(data_prefix, tmp_path, "--train-iters", "2", "--save", str(ck)))
    argv = tiny_argv(data_prefix, tmp_path, "--train-iters", "3", "--load", str(ck))
    i = argv.index("--data-path")
    argv[i + 1:i + 2] = ["0.7", data_prefix, "0.3", data_prefix]
    argv[argv.index("--seq-length") + 1] = "16"
    logs = []
    res = run(argv, logs)
    warn = [l for l in logs if l.startswith("warning")]
    assert len(warn) == 1, logs
    assert "--data-path" in warn[0] and "--seq-length 32 -> 16" in warn[0] and "--split" not in warn[0]
    assert res["state"]["iteration"] == 3 and res["state"]["consumed_samples"] == 12


def _fake_ckpt(d, it, commit_ns=None):
    path = d / f"iter_{it:07d}"
    path.mkdir(parents=True)
    meta = {"iteration": it} if commit_ns is None else {"iteration": it, "commit_time_ns": commit_ns}
    (path / "metadata.json").write_text(json.dumps(meta))
    return path


def test_retention_keeps_the_save_just_committed_and_latest(data_prefix, tmp_path, capsys):
    """Case 6: a second run with another LR and --keep-last 1 into a --save dir that holds another
    run's iter_0000004 (was: each of its saves deleted at once, `latest` dangling, --load silently
    taking the other run's iteration 4)."""
    ck = tmp_path / "ck"
    run(tiny_argv(data_prefix, tmp_path, "--train-iters", "4", "--save", str(ck)))
    logs = []
    res = run(tiny_argv(data_prefix, tmp_path, "--train-iters", "3", "--save", str(ck), "--save-interval", "1",
                        "--keep-last", "1", "--lr", "1e-3"), logs)
    assert [l.rsplit("/", 1)[-1] for l in logs if l.startswith("saved")] == [
        "iter_0000001", "iter_0000002", "iter_0000003"]
    assert list_iterations(str(ck)) == [3]  # ordered by commit time: the other run's 4 is older
    assert open(ck / "latest").read() == "iter_0000003"
    r = CheckpointReader(find_checkpoint(str(ck)))
    assert r.meta["state"]["iteration"] == 3 and r.meta["config"]["optim"]["lr"] == 1e-3
    for n, p in res["model"].named_parameters():
        assert torch.equal(r.read(n), p.detach()), n

    # prune on its own: never what `latest` names, newest commits kept, old checkpoints by mtime
    d = tmp_path / "p"
    old = _fake_ckpt(d, 9)  # no commit time: its metadata.json mtime counts
    os.utime(old / "metadata.json", ns=(1, 1))
    _fake_ckpt(d, 7, commit_ns=time.time_ns() - 10 ** 9)
    _fake_ckpt(d, 2, commit_ns=time.time_ns())
    (d / "latest").write_text("iter_0000009")
    ckpt.prune(str(d), 1)
    assert list_iterations(str(d)) == [2, 9]

    # `latest` naming a missing directory: one warning line, then the newest commit
    (d / "latest").write_text("iter_0000005")
    capsys.readouterr()
    assert find_checkpoint(str(d)).endswith("iter_0000002")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning:") and "iter_0000005" in err[0], err


# The public config.json facts of the models named in --help examples (Hugging Face hub).
HF_CONFIGS = {
    "Llama-3.2-1B": {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 16,
                     "head_dim": 64, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                     "rope_theta": 500000.0, "vocab_size": 128256, "tie_word_embeddings": True,
                     "attention_bias": False, "mlp_bias": False, "hidden_act": "silu",
                     "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                      "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
    "TinyLlama_v1.1": {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632,
                       "num_attention_heads": 32, "num_key_value_heads": 4, "num_hidden_layers": 22,
                       "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                       "rope_scaling": None, "vocab_size": 32000, "tie_word_embeddings": False,
                       "attention_bias": False, "hidden_act": "silu"},
}


def test_convert_from_hf_help_example_names_an_accepted_model(capsys):
    from megatron_th.cli.convert_from_hf import main
    from megatron_th.convert.hf_arch import model_fields_from_hf

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    named = re.findall(r"--hf \S*/([\w.-]+)\s", text)
    assert named, text
    for name in named:
        assert name in HF_CONFIGS, f"--help example names {name}: add its config.json facts to HF_CONFIGS"
        model_fields_from_hf(HF_CONFIGS[name], name, log=lambda *a: None)  # raises ConversionError if refused
