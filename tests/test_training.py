"""Single-process training: bitwise resume, non-finite skips, metrics, checkpoint format, generate."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from megatron_th.config import parse_config
from megatron_th.data.indexed import IndexedDatasetBuilder
from megatron_th.training import pretrain as pt
from megatron_th.training.checkpoint import CheckpointError, CheckpointReader, find_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_prefix(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    with IndexedDatasetBuilder(str(d / "syn")) as b:
        for _ in range(400):
            b.add_document(np.append(rng.integers(5, 300, size=rng.integers(5, 60)), 2))
    return str(d / "syn")


def tiny_argv(data_prefix, tmp, *extra):
    return ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--num-query-groups", "2",
            "--seq-length", "32", "--position-embedding-type", "rope", "--normalization", "RMSNorm", "--swiglu",
            "--disable-bias-linear", "--micro-batch-size", "2", "--global-batch-size", "4",
            "--data-path", data_prefix, "--data-cache-path", str(tmp / "cache"), "--lr", "3e-3",
            "--lr-warmup-iters", "2", "--lr-decay-iters", "20", "--log-interval", "1", "--seed", "5",
            "--hidden-dropout", "0.1", "--attention-dropout", "0.1", "--reset-attention-mask",
            "--reset-position-ids", "--num-threads", "1", *extra]


def run(argv, logs=None):
    cfg, _ = parse_config(argv)
    return pt.pretrain(cfg, log=(logs.append if logs is not None else lambda m: None))


def test_resume_is_bitwise_identical(data_prefix, tmp_path, capsys):
    full = run(tiny_argv(data_prefix, tmp_path, "--train-iters", "8"))
    ck = tmp_path / "ck"
    first = run(tiny_argv(data_prefix, tmp_path, "--train-iters", "4", "--save", str(ck)))
    with open(ck / "logs" / "metrics.jsonl", "a") as f:  # what a run killed after iteration 4's save logged
        f.write(json.dumps({"iteration": 5, "lm_loss": 1.0}) + "\n" + '{"iteration": 6, "lm_')
    second = run(tiny_argv(data_prefix, tmp_path, "--train-iters", "8", "--load", str(ck), "--save", str(ck)))
    assert first["losses"] == full["losses"][:4]
    assert second["losses"] == full["losses"][4:]  # bitwise: the same floats
    assert second["state"] == {"iteration": 8, "consumed_samples": 32, "skipped_iters": 0}
    for a, b in zip(full["model"].parameters(), second["model"].parameters()):
        assert torch.equal(a, b)
    # the dropout really was on (the resume restored the RNG, not a no-op)
    again = run(tiny_argv(data_prefix, tmp_path, "--train-iters", "8", "--hidden-dropout", "0", "--attention-dropout", "0"))
    assert again["losses"] != full["losses"]
    # metrics: one JSON line per step with the documented keys, appended across the resume
    recs = [json.loads(l) for l in open(ck / "logs" / "metrics.jsonl")]
    assert [r["iteration"] for r in recs] == list(range(1, 9))  # the killed run's 5 and 6 moved aside
    assert open(ck / "logs" / "metrics.jsonl.superseded").read() == '{"iteration": 5, "lm_loss": 1.0}\n{"iteration": 6, "lm_\n'
    keys = {"iteration", "consumed_samples", "lm_loss", "grad_norm", "lr", "loss_scale", "skipped_iters",
            "tokens_per_sec", "tflops", "mfu"}
    assert keys <= set(recs[0])
    assert recs[5]["lm_loss"] == pytest.approx(full["losses"][5])
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("iter 8/8")][0]
    assert " | loss " in line and "tok/s" in line and "MFU" in line and "eta" in line


def test_checkpoint_layout_and_safety(data_prefix, tmp_path):
    ck = tmp_path / "ck"
    run(tiny_argv(data_prefix, tmp_path, "--train-iters", "3", "--save", str(ck), "--save-interval", "1",
                  "--keep-last", "2", "--bf16"))
    assert sorted(os.listdir(ck)) == ["iter_0000002", "iter_0000003", "latest", "logs"]
    assert open(ck / "latest").read() == "iter_0000003"
    r = CheckpointReader(find_checkpoint(str(ck)))
    assert r.meta["state"]["iteration"] == 3 and r.meta["config"]["optim"]["bf16"] is True
    assert r.tensors["layers.0.mlp.linear_fc1.weight"]["dtype"] == "bfloat16"
    assert r.tensors["optim.master.layers.0.mlp.linear_fc1.weight"]["dtype"] == "float32"
    assert os.path.isfile(os.path.join(r.path, "tokenizer.model"))
    mode = lambda f: os.stat(os.path.join(r.path, f)).st_mode & 0o777  # noqa: E731
    assert mode("shard_00000.safetensors") == mode("metadata.json")  # not 0600: the team reads it too
    # a planted pickle is refused
    torch.save({"x": 1}, os.path.join(r.path, "evil.pt"))
    with pytest.raises(CheckpointError, match="refusing to load a pickle"):
        CheckpointReader(r.path)
    os.remove(os.path.join(r.path, "evil.pt"))
    import pickle  # a pickle renamed to look like a shard is refused too
    with open(os.path.join(r.path, "shard_00009.safetensors"), "wb") as f:
        pickle.dump({"x": 1}, f)
    with pytest.raises(CheckpointError, match="refusing to load a pickle"):
        CheckpointReader(r.path)
    os.remove(os.path.join(r.path, "shard_00009.safetensors"))
    # a real safetensors shard whose 8-byte header length starts with 0x80 is not mistaken for one
    from safetensors.torch import save_file
    for n in range(1, 200):
        path = os.path.join(r.path, "shard_00010.safetensors")
        save_file({"k" * n: torch.zeros(1)}, path)
        if open(path, "rb").read(1) == b"\x80":
            break
    assert open(path, "rb").read(1) == b"\x80"
    CheckpointReader(r.path)
    os.remove(path)
    # a metadata path leaving the directory is refused
    meta = json.load(open(os.path.join(r.path, "metadata.json")))
    meta["tensors"]["layers.0.mlp.linear_fc1.weight"]["slices"][0]["file"] = "../../x.safetensors"
    json.dump(meta, open(os.path.join(r.path, "metadata.json"), "w"))
    with pytest.raises(CheckpointError, match="points outside the checkpoint"):
        CheckpointReader(r.path)
    # an unfinished save (tmp dir) is ignored; latest still loads
    os.makedirs(ck / "iter_0000004.tmp")
    assert find_checkpoint(str(ck)).endswith("iter_0000003")


def test_non_finite_loss_is_skipped_then_aborts(data_prefix, tmp_path, monkeypatch):
    real = pt.Stepper.train
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] in (2, 4, 5, 6) else out

    monkeypatch.setattr(pt.Stepper, "train", flaky)
    logs = []
    with pytest.raises(pt.TrainingAborted, match="3 consecutive iterations"):
        run(tiny_argv(data_prefix, tmp_path, "--train-iters", "10", "--max-skipped-iters", "3"), logs)
    skipped = [l for l in logs if "skipped the update" in l]
    assert [l.split(":")[0] for l in skipped] == ["iter 2", "iter 4", "iter 5", "iter 6"]


def test_fp16_overflow_in_the_loop(data_prefix, tmp_path, monkeypatch):
    real = pt.Stepper.train

    def overflow_once(self, micro, ntok, scale):
        out = real(self, micro, ntok, scale)
        if not hasattr(overflow_once, "done"):
            overflow_once.done = True
            next(self.chunks[0].parameters()).main_grad.fill_(float("inf"))
        return out

    monkeypatch.setattr(pt.Stepper, "train", overflow_once)
    res = run(tiny_argv(data_prefix, tmp_path, "--train-iters", "3", "--fp16", "--hysteresis", "1",
                        "--initial-loss-scale", "1024", "--save", str(tmp_path / "ck")))
    assert res["state"]["skipped_iters"] == 1
    meta = CheckpointReader(find_checkpoint(str(tmp_path / "ck"))).meta
    assert meta["optimizer"]["loss_scaler"]["scale"] == 512.0
    assert all(math.isfinite(x) for x in res["losses"])


def test_cli_errors_are_one_line(tmp_path):
    out = subprocess.run([sys.executable, "pretrain_gpt.py", "--hidden-size", "30", "--num-attention-heads", "4"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --hidden-size 30 is not divisible by --num-attention-heads 4"
    helped = subprocess.run([sys.executable, "pretrain_gpt.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert "RoPE theta" in helped.stdout and "--use-distributed-optimizer" in helped.stdout


def test_generate_tool(data_prefix, tmp_path):
    ck = tmp_path / "ck"
    run(tiny_argv(data_prefix, tmp_path, "--train-iters", "2", "--save", str(ck)))
    out = subprocess.run([sys.executable, "tools/generate.py", "--load", str(ck), "--prompt", "สวัสดี",
                          "--max-new-tokens", "5", "--ids"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text, ids = out.stdout.strip().splitlines()[-2:]
    assert text.startswith("สวัสดี") and 1 <= len(json.loads(ids)) <= 5
    bad = subprocess.run([sys.executable, "tools/generate.py", "--load", str(tmp_path / "nothing"), "--prompt", "x"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and f"--load {tmp_path / 'nothing'}: no complete checkpoint there" in bad.stderr


def test_demo_path_end_to_end(tmp_path):
    """`make demo`'s own script: torchrun, 8 processes in TP 2 x PP 2 x DP 2 with Zero-1 on the
    embedded corpus, a checkpoint, then generation from it (shortened)."""
    out = subprocess.run([sys.executable, "tools/demo.py", "--save", str(tmp_path / "demo"), "--min-drop", "0.2",
                          "--", "--train-iters", "16", "--log-interval", "4", "--eval-interval", "8",
                          "--save-interval", "8"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "TP 2 PP 2 DP 2" in out.stdout and "eval iter 8" in out.stdout
    summary = [l for l in out.stdout.splitlines() if l.startswith("demo: loss")][0]
    assert "over 16 iterations" in summary
    assert sorted(os.listdir(tmp_path / "demo"))[:2] == ["iter_0000008", "iter_0000016"]
    generated = out.stdout.split("generate.py", 1)[1].split("\n", 1)[1]  # the sample may hold newlines
    assert generated.startswith("ประเทศไทยมี") and len(generated.strip()) > len("ประเทศไทยมี")


def test_plot_logs_and_sampling(data_prefix, tmp_path):
    ck = tmp_path / "ck"
    run(tiny_argv(data_prefix, tmp_path, "--train-iters", "3", "--save", str(ck), "--eval-interval", "2",
                  "--split", "90,10,0"))
    png = tmp_path / "curves.png"
    out = subprocess.run([sys.executable, "tools/plot_logs.py", str(ck), "--output", str(png)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    from megatron_th.inference import generate, load_for_inference

    model, tok, _ = load_for_inference(str(ck))
    prompt = tok.encode("ภาษาไทย")
    a = generate(model, prompt, 12, None, temperature=1.0, top_k=50, top_p=0.9, seed=3)
    b = generate(model, prompt, 12, None, temperature=1.0, top_k=50, top_p=0.9, seed=3)
    c = generate(model, prompt, 12, None, temperature=1.0, top_k=50, top_p=0.9, seed=4)
    assert a == b and a != c and len(a) == 12
    greedy = generate(model, prompt, 12, None)
    assert greedy == generate(model, prompt, 12, None, top_k=5)  # greedy ignores sampling filters
    top1 = generate(model, prompt, 12, None, temperature=1.0, top_k=1, seed=9)
    assert top1 == greedy  # top-k 1 sampling is greedy


def test_async_save_writes_the_same_checkpoints(data_prefix, tmp_path):
    from megatron_th.training.checkpoint import list_iterations

    out = {}
    for mode in ("sync", "async"):
        ck = tmp_path / mode
        run(tiny_argv(data_prefix, tmp_path, "--train-iters", "5", "--save", str(ck), "--save-interval", "2",
                      *(["--async-save"] if mode == "async" else [])))
        assert list_iterations(str(ck)) == [2, 4, 5]
        out[mode] = {}
        for it in (2, 4, 5):
            r = CheckpointReader(str(ck / f"iter_{it:07d}"))
            out[mode][it] = {n: r.read(n) for n in r.tensors}
    for it in (2, 4, 5):
        assert out["sync"][it].keys() == out["async"][it].keys()
        for n, t in out["sync"][it].items():
            assert torch.equal(t, out["async"][it][n]), (it, n)


def test_unusable_dirs_and_environment_fail_at_startup_in_one_line(tmp_path, monkeypatch, capsys):
    """Issue 13 review: a bad --save / --load / cache / LOCAL_RANK is one `error:` line before any
    training (not a traceback, not an error at the first save hours later)."""
    from megatron_th.training.pretrain import main

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    base = ["--num-layers", "1", "--hidden-size", "16", "--num-attention-heads", "2", "--seq-length", "16",
            "--micro-batch-size", "1", "--global-batch-size", "1", "--train-iters", "1"]
    cases = [(["--save", str(blocker / "ck")], {}, f"error: --save {blocker / 'ck'}: cannot write there"),
             (["--log-dir", str(blocker / "logs")], {}, f"error: --log-dir {blocker / 'logs'}: cannot write there"),
             (["--load", str(blocker)], {}, f"error: --load {blocker}: not a directory"),
             ([], {"LOCAL_RANK": "abc"}, "error: LOCAL_RANK='abc' in the environment is not a non-negative integer"),
             ([], {"MEGATRON_TH_CACHE": str(blocker)}, "error: cannot build the embedded corpus in")]
    for extra, env, want in cases:
        with monkeypatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            rc = main(base + extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith(want), (extra, env, err)


def test_a_flag_that_reads_a_checkpoint_finds_none_is_one_error(data_prefix, tmp_path, capsys):
    """--finetune, --use-checkpoint-args and --skip-train --load read a checkpoint: where --load holds
    none (a typo, an unfinished first save) the run stops with one error line instead of training or
    scoring a random model; a plain --load of an empty directory still starts from scratch."""
    missing = str(tmp_path / "no_such_ckpt")
    for extra, named in ((["--finetune", "--load", missing], f"--finetune: no complete checkpoint in --load {missing}"),
                         (["--use-checkpoint-args"], "--use-checkpoint-args: needs --load CHECKPOINT_DIR"),
                         (["--skip-train", "--load", missing], "--skip-train: no complete checkpoint")):
        assert pt.main(tiny_argv(data_prefix, tmp_path, "--train-iters", "1", *extra)) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: " + named) and len(err.strip().splitlines()) == 1, err
    assert pt.main(tiny_argv(data_prefix, tmp_path, "--train-iters", "1", "--load", missing,
                             "--log-dir", str(tmp_path / "logs"))) == 0
    assert "holds no complete checkpoint yet; starting from scratch" in capsys.readouterr().out
