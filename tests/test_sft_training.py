"""SFT training proofs (issue 16), fp32 on CPU:

- packed conversations give the loss and gradients of one conversation per sequence, and of each
  conversation run alone (no cross-contamination), for both loss normalizations;
- the gradient does not depend on the split (micro-batch, accumulation, DP): (1, 8, 1) = (4, 1, 2)
  = (2, 2, 2) for token and conversation normalization;
- TP=2 + SP (token), PP=2 and DP=2 + Zero-1 (conversation normalization) equal one process over
  10 SFT steps;
- HF parity: transformers' assistant-masked cross-entropy of the exported checkpoint over a
  held-out set (each conversation run alone) equals ``--skip-train --full-validation``, in one
  process and at DP=2 (a padded last batch);
- --finetune loads weights only, a run's own checkpoints resume without it (bitwise),
  --skip-train --split 0,100,0 works for pretraining too, --full-validation of pretraining equals
  a direct sum over every sample, metrics.jsonl carries ``loss_normalization``.

One 2-rank launch covers every multi-process check.
"""
import json
import os

import numpy as np
import pytest
import torch

from megatron_th.config import finalize, parse_config
from megatron_th.data.indexed import IndexedDatasetBuilder
from megatron_th.data.sft_dataset import SFTDataset, collate
from megatron_th.model.gpt import build_model
from megatron_th.training.step import forward_backward, model_inputs
from megatron_th.training.tasks.sft import SFTTask
from tests import dist as D
from tests.test_sft_packing import random_convs, write_sft

QUIET = lambda *a, **k: None  # noqa: E731


def model_argv(*extra):
    """A tiny Llama-shaped model (exportable to LlamaForCausalLM)."""
    return ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "8", "--num-query-groups", "4",
            "--ffn-hidden-size", "64", "--seq-length", "32", "--position-embedding-type", "rope",
            "--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear", "--hidden-dropout", "0",
            "--attention-dropout", "0", "--make-vocab-size-divisible-by", "128", *extra]


def sft_argv(prefix, cache, *extra):
    return model_argv("--sft", "--data-path", prefix, "--data-cache-path", cache, "--micro-batch-size", "2",
                      "--global-batch-size", "4", "--split", "100,0,0", "--lr", "3e-3", "--lr-warmup-iters", "2",
                      "--lr-decay-iters", "20", "--log-interval", "100", "--seed", "3", "--num-threads", "1",
                      "--peak-tflops", "1", *extra)


def train(args, iters=None, log=QUIET):
    from megatron_th.training.pretrain import pretrain

    cfg, _ = parse_config(list(args) + (["--train-iters", str(iters)] if iters is not None else []))
    return pretrain(cfg, log=log)


def grads(out) -> dict:
    """Every parameter's gradient of the run's last step (the DP-reduced ``main_grad`` buffer,
    which the optimizer step leaves in place; the runs use --clip-grad 0 so it is unscaled)."""
    return {n: p.main_grad.detach().clone().numpy() for n, p in out["named_params"]}


def assert_rel(a, b, rtol=1e-5, what=""):
    """max |a - b| <= rtol * max |b| (per tensor)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(b).max()
    assert scale > 0, what
    err = np.abs(a - b).max() / scale
    assert err <= rtol, f"{what}: relative difference {err:.3g} > {rtol}"


def assert_grads_equal(a: dict, b: dict, rtol=1e-5, what=""):
    assert a.keys() == b.keys()
    for k in a:
        assert_rel(a[k], b[k], rtol, f"{what} {k}")


# ------------------------------------------------------------------------------------ data
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: as the runs' --num-threads 1


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft_train")
    train, held = str(tmp / "chat"), str(tmp / "held")
    write_sft(train, random_convs(0, 64, 30))
    write_sft(held, random_convs(1, 23, 30))  # 23 conversations: the last batches are padded
    rng = np.random.default_rng(5)
    lm = str(tmp / "lm")
    with IndexedDatasetBuilder(lm) as b:  # pretraining documents (EOD 2) for --finetune / --skip-train
        for _ in range(40):
            b.add_document(np.append(rng.integers(5, 300, size=rng.integers(5, 50)), 2))
    return {"tmp": tmp, "train": train, "held": held, "lm": lm, "cache": str(tmp / "cache")}


# -------------------------------------------------------- packed == unpacked == each alone
def _model_and_task(norm, position_embedding):
    cfg, _ = parse_config(model_argv("--sft", "--sft-loss-normalization", norm, "--position-embedding-type",
                                     position_embedding))
    finalize(cfg, 1)
    return build_model(cfg.model, 512, seed=11), SFTTask(cfg)


def _step(model, task, micro):
    """(loss, grads) of one global batch made of ``micro`` (the loop's arithmetic: step.py)."""
    model.zero_grad()
    n = sum(task.normalizer(mb) for mb in micro)
    total = forward_backward(model, micro, n, 1.0, "cpu", task)
    return float(total[0]) / n, {k: p.grad.clone().numpy() for k, p in model.named_parameters()}


def _alone(model, convs, norm):
    """Each conversation through the model by itself (no packing, no padding, positions 0..n-1):
    (loss, grads) of the same global batch computed without any batching machinery."""
    model.zero_grad()
    terms, counts = [], []
    for tokens, mask in convs:
        x = torch.as_tensor(tokens, dtype=torch.int64)[None]
        if x.shape[1] < 2:
            continue
        per_token = model(tokens=x[:, :-1], labels=x[:, 1:])[0]
        m = torch.as_tensor(mask[1:] != 0, dtype=torch.float32)
        terms.append((per_token * m).sum())
        counts.append(float(m.sum()))
    if norm == "token":
        loss = sum(terms) / sum(counts)
    else:
        kept = [t / c for t, c in zip(terms, counts) if c > 0]
        loss = sum(kept) / len(kept)
    loss.backward()
    return loss.detach().item(), {k: p.grad.clone().numpy() for k, p in model.named_parameters()}


# RoPE sees only position differences inside a conversation (per-conversation attention), so
# learned absolute positions are the case where positions that do not restart would show
@pytest.mark.parametrize("norm,position_embedding", [("token", "rope"), ("conversation", "learned_absolute")])
def test_packed_equals_one_conversation_per_sequence_and_alone(data, norm, position_embedding):
    model, task = _model_and_task(norm, position_embedding)
    prefix, n = data["train"], 64
    packed = SFTDataset(prefix, 0, (0, n), 32, 9, 1, pack=True, cache_dir=data["cache"], log=QUIET).one_epoch()
    unpacked = SFTDataset(prefix, 0, (0, n), 32, 9, n, pack=False, cache_dir=data["cache"], log=QUIET)
    p = packed.samples_per_epoch  # epoch 0: every conversation exactly once, in both
    assert p < n
    ids_p = sorted(c for i in range(p) for c in packed.conversations(i).tolist())
    ids_u = sorted(c for i in range(n) for c in unpacked.conversations(i).tolist())
    assert ids_p == ids_u == list(range(n))
    one = [packed[i] for i in range(p)]
    assert max(len(x["conversation_ids"]) for x in one) >= 3  # sequences really hold several
    loss_p, g_p = _step(model, task, [collate(one[i:i + 3]) for i in range(0, p, 3)])
    loss_u, g_u = _step(model, task, [collate([unpacked[j] for j in range(i, min(i + 4, n))])
                                      for i in range(0, n, 4)])
    loss_a, g_a = _alone(model, random_convs(0, 64, 30), norm)  # the conversations written by `data`
    assert abs(loss_p - loss_u) <= 1e-5 * abs(loss_u) and abs(loss_p - loss_a) <= 1e-5 * abs(loss_a)
    assert_grads_equal(g_p, g_u, what="packed vs unpacked")
    assert_grads_equal(g_p, g_a, what="packed vs alone")


# -------------------------------------------------------------- the 2-rank launch
ITERS = 10
LAYOUTS = {  # name -> flags at world 2 (their serial reference: the same run in one process)
    "tp2_sp": ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
    "pp2": ["--pipeline-model-parallel-size", "2", "--micro-batch-size", "1",
            "--sft-loss-normalization", "conversation"],
    "dp2_zero1": ["--use-distributed-optimizer", "--sft-loss-normalization", "conversation"],
}
SPLITS = {"mbs1_ga8_dp1": (1, 1), "mbs4_ga1_dp2": (4, 2), "mbs2_ga2_dp2": (2, 2)}  # name -> (mbs, world)
NORMS = ("token", "conversation")


def grad_argv(d, mbs, norm):
    return sft_argv(d["train"], d["cache"], "--micro-batch-size", str(mbs), "--global-batch-size", "8",
                    "--clip-grad", "0", "--sft-loss-normalization", norm)


def eval_argv(d, load):
    return sft_argv(d["held"], d["cache"], "--load", load, "--skip-train", "--full-validation", "--split",
                    "0,100,0", "--global-batch-size", "8")


def _launch_body(rank, world, d, load):
    out = {}
    for name, flags in LAYOUTS.items():
        r = train(sft_argv(d["train"], d["cache"], *flags), ITERS)
        out[name] = (r["losses"], r["grad_norms"])
    for name, (mbs, w) in SPLITS.items():
        if w == world:
            for norm in NORMS:
                out[(name, norm)] = grads(train(grad_argv(d, mbs, norm), 1))
    out["full_validation_dp2"] = train(eval_argv(d, load))["eval"]["lm_loss"]
    return out


@pytest.fixture(scope="module")
def runs(data):
    d = {k: v for k, v in data.items() if k != "tmp"}
    ck = str(data["tmp"] / "ck_sft")
    serial = {norm: train(sft_argv(d["train"], d["cache"], "--sft-loss-normalization", norm,
                                   *(["--save", ck] if norm == "token" else [])), ITERS) for norm in NORMS}
    split_grads = {("mbs1_ga8_dp1", norm): grads(train(grad_argv(d, 1, norm), 1)) for norm in NORMS}
    par = D.run(_launch_body, 2, d, ck, timeout=300)
    return {"serial": serial, "grads": split_grads, "par": par, "ck": ck}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_parallel_layouts_equal_one_process_over_10_sft_steps(runs, layout):
    norm = "conversation" if "conversation" in LAYOUTS[layout] else "token"
    ref = runs["serial"][norm]
    assert len(ref["losses"]) == ITERS and ref["losses"][-1] < ref["losses"][0]  # it trained
    for rank_out in runs["par"]:
        loss, gnorm = rank_out[layout]
        np.testing.assert_allclose(loss, ref["losses"], rtol=1e-5, atol=0)
        np.testing.assert_allclose(gnorm, ref["grad_norms"], rtol=1e-4, atol=0)


@pytest.mark.parametrize("norm", NORMS)
def test_gradient_does_not_depend_on_micro_batch_accumulation_or_dp(runs, norm):
    ref = runs["grads"][("mbs1_ga8_dp1", norm)]
    for name in ("mbs4_ga1_dp2", "mbs2_ga2_dp2"):
        for rank_out in runs["par"]:
            assert_grads_equal(rank_out[(name, norm)], ref, what=f"{name} {norm}")
    other = runs["grads"][("mbs1_ga8_dp1", "conversation" if norm == "token" else "token")]
    assert any(np.abs(ref[k] - other[k]).max() > 1e-3 * np.abs(ref[k]).max() for k in ref)  # they differ


# ------------------------------------------------------------------------- HF parity
def test_hf_parity_of_full_validation(runs, data, tmp_path):
    transformers = pytest.importorskip("transformers", reason="HF parity needs the [hf] extra")
    from megatron_th.convert.to_hf import export_to_hf
    from megatron_th.data.sft_dataset import open_sft_data

    log_dir, logs = str(tmp_path / "logs"), []
    out = train(eval_argv(data, runs["ck"]) + ["--log-dir", log_dir], log=logs.append)
    assert not [line for line in logs if line.startswith("warning:")]  # other data on purpose: nothing resumes
    ours = out["eval"]["lm_loss"]
    assert out["state"]["iteration"] == ITERS and out["losses"] == []
    hf_dir = str(tmp_path / "hf")
    export_to_hf(runs["ck"], hf_dir, log=QUIET, progress=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                           local_files_only=True).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    tokens, masks = open_sft_data(data["held"])
    total, count = 0.0, 0.0
    with torch.no_grad():
        for i in range(len(tokens)):
            x = torch.as_tensor(tokens.get(i).astype(np.int64))[None]
            m = torch.as_tensor(masks.get(i)[1:] != 0, dtype=torch.float64)
            logits = hf(input_ids=x).logits[0, :-1].double()
            ce = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="none")
            total += float((ce * m).sum())
            count += float(m.sum())
    theirs = total / count
    assert abs(ours - theirs) <= 1e-5 * theirs, (ours, theirs)
    held = SFTDataset(data["held"], 1, (0, len(tokens)), 32, 3, 1, cache_dir=data["cache"], log=QUIET)
    assert held.samples_per_epoch % 8 != 0  # so the last global batch of the full pass is padded
    for rank_out in runs["par"]:  # DP=2, 8 per global batch: padded last batch, same loss
        assert abs(rank_out["full_validation_dp2"] - theirs) <= 1e-5 * theirs
    recs = [json.loads(line) for line in open(os.path.join(log_dir, "metrics.jsonl"))]
    assert [(r["split"], r["loss_normalization"]) for r in recs] == [("valid", "token")]
    assert abs(recs[0]["lm_loss"] - ours) <= 1e-12 * ours


# --------------------------------------------------- --finetune, resume, --skip-train for pretraining
def _direct_first_batch_loss(model, cfg_args):
    """Loss of the first SFT global batch (samples 0..G-1) under ``model``'s weights."""
    from megatron_th.training.pretrain import setup_data

    cfg, _ = parse_config(cfg_args)
    finalize(cfg, 1)
    task = SFTTask(cfg)
    tok, _, ds = setup_data(cfg, QUIET, None, task)
    micro = task.loader(cfg, ds["train"], tok).next_global_batch()
    n = sum(task.normalizer(mb) for mb in micro)
    with torch.no_grad():
        return sum(float(task.loss(model(**model_inputs(mb, "cpu")), mb)[0]) for mb in micro) / n


def test_finetune_resume_skip_train_and_full_validation_of_pretraining(data, tmp_path):
    from megatron_th.data.packing import make_batch
    from megatron_th.training.pretrain import setup_data

    d = data
    base = str(tmp_path / "base")
    lm = sft_argv(d["lm"], d["cache"])
    lm = [a for a in lm if a != "--sft"]
    a = train(lm + ["--save", base, "--log-dir", str(tmp_path / "a_logs")], 3)
    assert a["optimizer"].num_steps == 3
    assert all("loss_normalization" not in json.loads(line)
               for line in open(tmp_path / "a_logs" / "metrics.jsonl"))

    # --finetune: weights only; iteration, optimizer and data from the start
    conv = ["--sft-loss-normalization", "conversation"]
    logs = []
    ft = sft_argv(d["train"], d["cache"], *conv, "--load", base, "--finetune")
    b = train(ft + ["--save", str(tmp_path / "b"), "--log-dir", str(tmp_path / "b_logs"),
                    "--log-interval", "1"], 2, log=logs.append)
    assert any(line.startswith("--finetune: weights of") for line in logs)
    assert b["state"]["iteration"] == 2 and b["state"]["consumed_samples"] == 8 and len(b["losses"]) == 2
    assert b["optimizer"].num_steps == 2
    assert {int(s["step"]) for s in b["optimizer"].opt.state.values()} == {2}  # Adam's step: fresh, not 3 + 2
    first = _direct_first_batch_loss(a["model"].chunks[0].eval(), sft_argv(d["train"], d["cache"], *conv))
    assert abs(b["losses"][0] - first) <= 1e-6 * first  # the pretrained weights on SFT samples 0..3
    recs = [json.loads(line) for line in open(tmp_path / "b_logs" / "metrics.jsonl")]
    assert len(recs) == 2 and all(r["loss_normalization"] == "conversation" for r in recs)

    # the run's own checkpoint resumes without --finetune, exactly where an uninterrupted run is
    c = train(sft_argv(d["train"], d["cache"], *conv, "--load", str(tmp_path / "b")), 4)
    whole = train(ft, 4)
    assert c["state"]["iteration"] == 4 and c["state"]["consumed_samples"] == 16
    assert b["losses"] + c["losses"] == whole["losses"]

    # --skip-train --split 0,100,0 for pretraining: --full-validation equals a direct sum over
    # every sample of one epoch (its count not a multiple of the global batch: padded last batch)
    ev_args = lm + ["--load", base, "--skip-train", "--full-validation", "--split", "0,100,0",
                    "--global-batch-size", "8"]
    ev = train(ev_args)
    cfg, _ = parse_config(ev_args)
    finalize(cfg, 1)
    tok, _, ds = setup_data(cfg, QUIET, None)
    epoch = ds["valid"].one_epoch()
    assert ds["train"] is None and len(epoch) % 8 != 0
    model = a["model"].chunks[0].eval()
    total, count = 0.0, 0.0
    with torch.no_grad():
        for i in range(len(epoch)):
            mb = make_batch(epoch[i][None], eod=tok.eod)
            per_token = model(**model_inputs(mb, "cpu")).double()
            total += float((per_token * mb["loss_mask"]).sum())
            count += float(mb["loss_mask"].sum())
    assert abs(ev["eval"]["lm_loss"] - total / count) <= 1e-5 * (total / count)
