"""DPO proofs (issue 17), fp32 on CPU:

- policy = reference (``--finetune`` from the checkpoint the reference table was computed from):
  the first step's sigmoid loss is ln 2 and every reward 0;
- policy != reference (the reference plus two SFT steps on other data): the first step's loss,
  rewards, accuracies, margins, log-probs and gradient norm equal what this file computes with
  transformers on both exported checkpoints, one formula per loss type (sigmoid with label
  smoothing, IPO, hinge, sigmoid + RPO term);
- ``--skip-train --full-validation`` evaluates every pair once (padded last batch) to the same
  transformers numbers, in one process and at DP=2;
- TP=2 + SP, PP=2 and DP=2 + Zero-1 equal one process over 10 DPO steps, and
  tools/compute_ref_logps.py at TP=2, PP=2 and DP=2 writes the TP=1 table (one 2-rank launch);
- a stale reference table (other data, other checkpoint, missing) is refused with one ``error:`` line.

Pairs are written here as tools/preprocess_dpo.py writes them (data/dpo_dataset.py's format).
"""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megatron_th.config import parse_config
from megatron_th.data.indexed import IndexedDatasetBuilder
from tests import dist as D

QUIET = lambda *a, **k: None  # noqa: E731
PAIRS = 8  # = the global batch: any epoch's first batch holds every pair once
SIDES = ("chosen", "rejected")


# ------------------------------------------------------------------------------------ data
def write_pairs(prefix, n, seed):
    """n pairs: a shared prompt (mask 0), then each side's completion ending in EOS 2 (mask 1)."""
    rng = np.random.default_rng(seed)
    out = {(s, k): IndexedDatasetBuilder(f"{prefix}_{s}_{k}", np.uint16 if k == "tokens" else np.uint8)
           for s in SIDES for k in ("tokens", "loss_mask")}
    for _ in range(n):
        prompt = rng.integers(5, 300, size=rng.integers(1, 7))
        for s in SIDES:
            completion = np.append(rng.integers(5, 300, size=rng.integers(1, 9)), 2)
            out[s, "tokens"].add_document(np.concatenate([prompt, completion]))
            out[s, "loss_mask"].add_document(np.r_[np.zeros(len(prompt)), np.ones(len(completion))].astype(np.uint8))
    for b in out.values():
        b.finalize()


def write_sft(prefix, n, seed):
    """n SFT conversations (prompt mask 0, answer mask 1): what moves the policy off the reference."""
    rng = np.random.default_rng(seed)
    with IndexedDatasetBuilder(prefix + "_tokens", np.uint16) as tb, \
         IndexedDatasetBuilder(prefix + "_loss_mask", np.uint8) as mb:
        for _ in range(n):
            a, b = int(rng.integers(1, 8)), int(rng.integers(2, 12))
            tb.add_document(rng.integers(5, 300, size=a + b))
            mb.add_document(np.r_[np.zeros(a), np.ones(b)].astype(np.uint8))


def read_pairs(prefix):
    """[(side, pair) -> (tokens int64, loss_mask)] straight from the indexed files."""
    from megatron_th.data.indexed import IndexedDataset

    out = {}
    for s in SIDES:
        tok, mask = IndexedDataset(f"{prefix}_{s}_tokens"), IndexedDataset(f"{prefix}_{s}_loss_mask")
        for i in range(len(tok)):
            out[s, i] = (tok.get(i).astype(np.int64), mask.get(i).astype(np.float64))
    return out


def model_argv(*extra):
    """A tiny Llama-shaped model (exportable to LlamaForCausalLM)."""
    return ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "8", "--num-query-groups", "4",
            "--ffn-hidden-size", "64", "--seq-length", "32", "--position-embedding-type", "rope",
            "--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear", "--hidden-dropout", "0",
            "--attention-dropout", "0", "--make-vocab-size-divisible-by", "128", "--num-threads", "1",
            "--peak-tflops", "1", "--seed", "3", "--log-interval", "1", "--lr-decay-style", "constant", *extra]


def dpo_argv(d, *extra):
    return model_argv("--dpo", "--data-path", d["pairs"], "--data-cache-path", d["cache"], "--ref-logps",
                      d["table"], "--micro-batch-size", "2", "--global-batch-size", str(PAIRS), "--split",
                      "100,0,0", "--lr", "1e-2", "--clip-grad", "0", *extra)


def ref_argv(d, output, *extra):
    return model_argv("--load", d["ref"], "--data-path", d["pairs"], "--data-cache-path", d["cache"],
                      "--micro-batch-size", "2", "--global-batch-size", "4", "--output", output, *extra)


def eval_argv(d, log_dir, *extra):
    """Every pair once against the policy; 6 a batch: the second batch is padded."""
    return dpo_argv(d, "--load", d["pol"], "--skip-train", "--full-validation", "--split", "0,100,0",
                    "--global-batch-size", "6", "--micro-batch-size", "1", "--log-dir", log_dir, *extra)


def train(args, iters=None, log=QUIET):
    from megatron_th.training.pretrain import pretrain

    cfg, _ = parse_config(list(args) + (["--train-iters", str(iters)] if iters is not None else []))
    return pretrain(cfg, log=log)


def records(log_dir):
    return [json.loads(line) for line in open(os.path.join(log_dir, "metrics.jsonl"))]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: as the runs' --num-threads 1


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Pairs, the reference (one SFT step on the chosen sides), the policy (the reference resumed
    for two SFT steps on other conversations: 24 samples consumed, so the DPO run resumed from it
    starts at a whole epoch of pairs) and the reference table at TP=1."""
    from megatron_th.training.ref_logps import compute_ref_logps

    tmp = tmp_path_factory.mktemp("dpo")
    d = {k: str(tmp / k) for k in ("pairs", "other", "sft", "cache", "ref", "pol")}
    d["table"] = str(tmp / "ref_tp1.safetensors")
    write_pairs(d["pairs"], PAIRS, 0)
    write_pairs(d["other"], PAIRS, 1)
    write_sft(d["sft"], 16, 2)
    sft = model_argv("--sft", "--data-cache-path", d["cache"], "--micro-batch-size", "4", "--global-batch-size",
                     "8", "--split", "100,0,0", "--lr", "1e-2")
    train(sft + ["--data-path", d["pairs"] + "_chosen", "--save", d["ref"]], 1)
    train(sft + ["--data-path", d["sft"], "--load", d["ref"], "--save", d["pol"]], 3)
    compute_ref_logps(ref_argv(d, d["table"]), log=QUIET)
    d["tmp"] = tmp
    return d


# ------------------------------------------------------------- transformers, independently
@pytest.fixture(scope="module")
def hf(data):
    """Both checkpoints exported and run with transformers, each sequence alone (positions from 0,
    no packing): per pair the summed completion log-prob of each side under the policy (with its
    graph, for gradients) and the reference, and the completion token counts."""
    transformers = pytest.importorskip("transformers", reason="HF parity needs the [hf] extra")
    from megatron_th.convert.to_hf import export_to_hf

    out = {}
    for name in ("ref", "pol"):
        path = str(data["tmp"] / f"hf_{name}")
        export_to_hf(data[name], path, log=QUIET, progress=False)
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
        assert type(model).__name__ == "LlamaForCausalLM"
        out[name] = model.eval()
    pairs = read_pairs(data["pairs"])
    logps = {"pol": {}, "ref": {}}
    for name, model in out.items():
        with torch.set_grad_enabled(name == "pol"):
            for s in SIDES:
                per = []
                for i in range(PAIRS):
                    x, m = pairs[s, i]
                    x = torch.as_tensor(x)[None]
                    lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)  # fp32, summed in fp64
                    per.append((lp.gather(1, x[0, 1:, None])[:, 0].double() * torch.as_tensor(m[1:])).sum())
                logps[name][s] = torch.stack(per)
    n = {s: torch.tensor([pairs[s, i][1][1:].sum() for i in range(PAIRS)], dtype=torch.float64) for s in SIDES}
    return {"policy": out["pol"], "logps": logps, "n": n}


def dpo_numbers(h, kind, beta, eps=0.0, w=0.0):
    """TRL's DPOTrainer numbers for one global batch of all pairs, from the formulas themselves:
    (metrics dict, global gradient norm of the step's loss)."""
    pc, pr = h["logps"]["pol"]["chosen"], h["logps"]["pol"]["rejected"]
    rc, rr = h["logps"]["ref"]["chosen"], h["logps"]["ref"]["rejected"]
    delta = (pc - rc) - (pr - rr)
    if kind == "ipo":  # each side's log-ratio averaged per completion token (TRL's ipo); metrics stay summed
        delta = (pc - rc) / h["n"]["chosen"] - (pr - rr) / h["n"]["rejected"]
    if kind == "sigmoid":  # Rafailov et al. 2023 eq. 7, conservative DPO (Mitchell 2023)
        losses = -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)
    elif kind == "ipo":  # Azar et al. 2023 eq. 17
        losses = (delta - 1 / (2 * beta)) ** 2
    else:  # hinge (SLiC-HF)
        losses = torch.relu(1 - beta * delta)
    loss = losses.mean()
    nll = -h["logps"]["pol"]["chosen"].sum() / h["n"]["chosen"].sum()  # mean NLL per chosen token (RPO)
    if w:
        loss = loss + w * nll
    params = [p for p in h["policy"].parameters()]
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    gnorm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
    pc, pr = pc.detach(), pr.detach()
    rew_c, rew_r = beta * (pc - rc), beta * (pr - rr)
    m = {"loss": float(loss.detach()), "rewards/chosen": float(rew_c.mean()), "rewards/rejected": float(rew_r.mean()),
         "rewards/accuracies": float((rew_c > rew_r).float().mean()), "rewards/margins": float((rew_c - rew_r).mean()),
         "logps/chosen": float(pc.mean()), "logps/rejected": float(pr.mean()), "nll_loss": float(nll.detach())}
    return m, gnorm


def assert_close(ours: dict, theirs: dict, rtol=1e-5, what=""):
    for k, v in theirs.items():
        assert abs(ours[k] - v) <= rtol * abs(v), f"{what} {k}: ours {ours[k]!r}, transformers {v!r}"


# ------------------------------------------------------------------------------- proofs
ITERS = 10
DROPOUT = ("--hidden-dropout", "0.2", "--attention-dropout", "0.2")  # asked for; --dpo forces 0


@pytest.fixture(scope="module")
def serial(data):
    """One process, ITERS DPO steps from the reference (``--finetune``: policy = reference at step
    1), dropout asked for and forced off, logged: the first step's proof and the layouts' baseline."""
    log_dir = str(data["tmp"] / "serial")
    out = train(dpo_argv(data, "--finetune", "--load", data["ref"], "--log-dir", log_dir, *DROPOUT), ITERS)
    return out, records(log_dir)


def test_policy_equal_to_reference_gives_ln2_and_zero_rewards(data, serial):
    from safetensors.torch import load_file

    # dropout asked for, and forced to 0 by --dpo (else the policy would not be the reference)
    out, recs = serial
    assert len(recs) == ITERS and recs[0]["iteration"] == 1
    rec = recs[0]
    assert abs(out["losses"][0] - math.log(2)) <= 1e-6 and abs(rec["loss"] - math.log(2)) <= 1e-6
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(rec[k]) <= 1e-6, (k, rec[k])
    table = load_file(data["table"])  # the step saw every pair once: the table's means
    assert abs(rec["logps/chosen"] - float(table["chosen_logps"].mean())) <= 1e-5 * abs(rec["logps/chosen"])
    assert rec["loss_type"] == "sigmoid" and rec["beta"] == 0.1


VARIANTS = {  # name -> (flags, the formula's arguments); one clips (norm ~6 > 1): the loop logs the norm before
    "sigmoid_label_smoothing": (["--dpo-label-smoothing", "0.1", "--dpo-beta", "0.5", "--clip-grad", "1"],
                                ("sigmoid", 0.5, 0.1, 0.0)),
    "ipo": (["--dpo-loss", "ipo", "--dpo-beta", "0.5"], ("ipo", 0.5, 0.0, 0.0)),
    "hinge": (["--dpo-loss", "hinge", "--dpo-beta", "2"], ("hinge", 2.0, 0.0, 0.0)),
    "sigmoid_rpo": (["--dpo-sft-weight", "0.5"], ("sigmoid", 0.1, 0.0, 0.5)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_first_step_equals_transformers(data, hf, tmp_path, variant):
    flags, (kind, beta, eps, w) = VARIANTS[variant]
    # resumed (no --finetune: the policy is not the reference) at iteration 3, 24 samples consumed
    out = train(dpo_argv(data, "--load", data["pol"], "--log-dir", str(tmp_path), *flags), 4)
    (rec,) = records(str(tmp_path))
    assert rec["iteration"] == 4 and rec["loss_type"] == kind and rec["beta"] == beta
    theirs, gnorm = dpo_numbers(hf, kind, beta, eps, w)
    assert 0 < theirs["rewards/accuracies"] < 1 and abs(theirs["rewards/margins"]) > 1e-3  # not a trivial batch
    assert_close(rec, theirs, what=variant)
    assert abs(out["losses"][0] - theirs["loss"]) <= 1e-5 * abs(theirs["loss"])
    assert abs(rec["grad_norm"] - gnorm) <= 1e-5 * gnorm, (rec["grad_norm"], gnorm)
    if "--clip-grad" in flags:
        assert gnorm > 2.0  # the clip acted; the logged norm is the one before it


def test_full_validation_equals_transformers(data, hf, tmp_path):
    out = train(eval_argv(data, str(tmp_path)))
    (rec,) = records(str(tmp_path))
    assert rec["split"] == "valid" and rec["iteration"] == 3 and out["losses"] == []
    theirs, _ = dpo_numbers(hf, "sigmoid", 0.1)
    del theirs["nll_loss"]
    assert_close(rec, theirs, what="--full-validation")


# ------------------------------------------------------------------------- stale tables
def _refused(argv, capsys):
    from megatron_th.training.pretrain import main

    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --ref-logps"), (rc, err)
    return err[0]


def test_stale_reference_table_is_refused(data, tmp_path, capsys):
    # other data (the table stays the one of data["pairs"])
    other = dict(data, pairs=data["other"])
    assert "other data" in _refused(dpo_argv(other, "--finetune", "--load", data["ref"], "--train-iters", "1"), capsys)
    # another checkpoint than the one it was computed from
    err = _refused(dpo_argv(data, "--finetune", "--load", data["pol"], "--train-iters", "1"), capsys)
    assert "not from the --load checkpoint" in err and "iteration 1" in err
    missing = dict(data, table=str(tmp_path / "none.safetensors"))
    assert "cannot read" in _refused(dpo_argv(missing, "--finetune", "--load", data["ref"], "--train-iters", "1"),
                                     capsys)


# ----------------------------------------------------------------------- the 2-rank launch
LAYOUTS = {  # TP: 2 micro-batches of 4 a step (half the collectives of 4 x 2; one process runs 4 x 2)
    "tp2_sp": ["--tensor-model-parallel-size", "2", "--sequence-parallel", "--micro-batch-size", "4"],
    "pp2": ["--pipeline-model-parallel-size", "2"],
    "dp2_zero1": ["--use-distributed-optimizer"],
}


def _launch_body(rank, world, d):
    from megatron_th.training.ref_logps import compute_ref_logps

    out = {}
    for name, flags in LAYOUTS.items():
        r = train(dpo_argv(d, "--finetune", "--load", d["ref"], *DROPOUT, *flags), ITERS)
        out[name] = (r["losses"], r["grad_norms"])
        fp = compute_ref_logps(ref_argv(d, d[f"table_{name}"], *flags), log=QUIET)
        if fp is not None:
            out["fingerprint_" + name] = fp
    train(eval_argv(d, d["eval_dp2"]))  # DP=2: the padded last batch split over ranks
    return out


@pytest.fixture(scope="module")
def runs(data, serial):
    d = {k: v for k, v in data.items() if k != "tmp"}
    for name in LAYOUTS:
        d[f"table_{name}"] = str(data["tmp"] / f"ref_{name}.safetensors")
    d["eval_dp2"] = str(data["tmp"] / "eval_dp2")
    par = D.run(_launch_body, 2, d, timeout=300)
    return {"serial": serial[0], "par": par, "d": d}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_parallel_layouts_equal_one_process_over_10_dpo_steps(runs, layout):
    ref = runs["serial"]
    assert len(ref["losses"]) == ITERS and ref["losses"][-1] < ref["losses"][0] - 0.05  # it trained
    for rank_out in runs["par"]:
        loss, gnorm = rank_out[layout]
        np.testing.assert_allclose(loss, ref["losses"], rtol=1e-5, atol=0)
        np.testing.assert_allclose(gnorm, ref["grad_norms"], rtol=1e-4, atol=0)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_reference_table_does_not_depend_on_the_layout(runs, data, layout):
    from safetensors.torch import load_file

    d = runs["d"]
    one, par = load_file(data["table"]), load_file(d[f"table_{layout}"])
    assert one.keys() == par.keys() and len(one["chosen_logps"]) == PAIRS
    for k in one:
        assert torch.allclose(par[k], one[k], rtol=1e-6, atol=0), (k, par[k] - one[k])
    fps = [r["fingerprint_" + layout] for r in runs["par"] if "fingerprint_" + layout in r]
    assert len(fps) == 1  # one rank wrote it
    with open(data["table"] + ".json") as f:
        fp1 = json.load(f)
    assert fps[0]["data"] == fp1["data"] and fps[0]["checkpoint"] == fp1["checkpoint"]


def test_full_validation_at_dp2_equals_transformers(runs, hf):
    (rec,) = records(runs["d"]["eval_dp2"])
    assert rec["split"] == "valid" and rec["iteration"] == 3
    theirs, _ = dpo_numbers(hf, "sigmoid", 0.1)
    del theirs["nll_loss"]
    assert_close(rec, theirs, what="--full-validation at DP=2")
