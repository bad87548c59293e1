"""--optimizer sgd | adafactor | muon: torch's numbers on one device, the same run at every layout
(DP=2 + Zero-1, TP=2, PP=2), exact resume, resume at another layout, and the optimizer-state bytes
the estimator predicts. The layouts run once, in one spawned group (tests/optim_runs.py)."""
import math

import numpy as np
import pytest
import torch

from megatron_th.config import OptimConfig, finalize, parse_config
from megatron_th.training.optimizer import MixedPrecisionOptimizer
from tests import optim_runs as R


@pytest.fixture(scope="module")
def runs():
    return R.runs()


def _named():
    g = torch.Generator().manual_seed(0)
    return [("layers.0.self_attention.linear_proj.weight", torch.nn.Parameter(torch.randn(6, 10, generator=g) * 0.1)),
            ("layers.0.mlp.linear_fc1.weight", torch.nn.Parameter(torch.randn(12, 5, generator=g) * 0.1)),
            ("embedding.word_embeddings.weight", torch.nn.Parameter(torch.randn(9, 5, generator=g) * 0.1)),
            ("final_norm.weight", torch.nn.Parameter(torch.randn(7, generator=g)))]


def _steps(named, refs, opt, torch_opts, n=5, lr=0.01):
    """n steps of ``opt`` on ``named`` and of ``torch_opts`` on ``refs``, with the same gradients."""
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        for (_, p), r in zip(named, refs):
            grad = torch.randn(p.shape, generator=g)
            p.grad, r.grad = grad.clone(), grad.clone()
        opt.step(lr)
        for t in torch_opts:
            t.step()


def test_adafactor_and_muon_match_torch_on_one_device():
    """Adafactor: torch.optim.Adafactor's update (to fp32 rounding: our scalars stay on the device);
    Muon (bf16 Newton-Schulz as torch, shape_scaling = torch's "original" LR adjustment, Nesterov):
    torch.optim.Muon on the matrices plus AdamW on the embedding and norm, bitwise."""
    named = _named()
    r = [p.detach().clone().requires_grad_(True) for _, p in named]
    opt = MixedPrecisionOptimizer(named, OptimConfig(optimizer="adafactor", weight_decay=0.1, clip_grad=0.0))
    ta = torch.optim.Adafactor([{"params": r[:3], "weight_decay": 0.1}, {"params": r[3:], "weight_decay": 0.0}], lr=0.01)
    _steps(named, r, opt, [ta])
    for (n, p), q in zip(named, r):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=n)
    assert not torch.equal(named[0][1], _named()[0][1])  # it moved

    named = _named()
    r = [p.detach().clone().requires_grad_(True) for _, p in named]
    o = OptimConfig(optimizer="muon", weight_decay=0.1, clip_grad=0.0, muon_scale_mode="shape_scaling",
                    muon_use_nesterov=True, muon_momentum=0.95)
    opt = MixedPrecisionOptimizer(named, o)
    tm = torch.optim.Muon(r[:2], lr=0.01, weight_decay=0.1, momentum=0.95, nesterov=True)
    tw = torch.optim.AdamW([{"params": r[2:3], "weight_decay": 0.1}, {"params": r[3:], "weight_decay": 0.0}],
                           lr=0.01, betas=(0.9, 0.95), eps=1e-8, fused=True)
    _steps(named, r, opt, [tm, tw])
    for (n, p), q in zip(named, r):
        assert torch.equal(p, q), n


def test_muon_orthogonalises_q_k_v_and_gate_up_separately():
    """With the split (Megatron's default) each of q, k, v, gate, up gets its own Newton-Schulz;
    without it the fused matrix does: the updates differ, and the split update of q equals
    orthogonalising q's rows alone."""
    from megatron_th.training.optimizers.muon import Muon, newton_schulz, scale_factor

    cfg = parse_config(["--num-layers", "1", "--hidden-size", "16", "--num-attention-heads", "4",
                        "--num-query-groups", "2", "--swiglu", "--ffn-hidden-size", "8"])[0]
    m = finalize(cfg).model
    full = torch.randn((4 + 2 * 2) * 4, 16, generator=torch.Generator().manual_seed(2))
    o = OptimConfig(optimizer="muon", muon_fp32_matmul_prec="high")
    rule = Muon([], [], o, None, m)
    upd, factor = rule._orthogonalise("layers.0.self_attention.linear_qkv.weight", full)
    q_rows = full.view(2, 16, 16)[:, :8].reshape(-1, 16)
    want_q = newton_schulz(q_rows, 5, torch.float32) * scale_factor(16, 16, "spectral")
    torch.testing.assert_close(upd.view(2, 16, 16)[:, :8].reshape(-1, 16) * factor, want_q)
    o.muon_split_qkv = False
    fused, _ = rule._orthogonalise("layers.0.self_attention.linear_qkv.weight", full)
    assert (fused.float() - upd).abs().max() > 1e-2
    o.muon_split_qkv = True
    fc1 = torch.randn(16, 16, generator=torch.Generator().manual_seed(3))
    upd, factor = rule._orthogonalise("layers.0.mlp.linear_fc1.weight", fc1)
    torch.testing.assert_close(upd[:8] * factor, newton_schulz(fc1[:8], 5, torch.float32) * scale_factor(8, 16, "spectral"))


@pytest.mark.parametrize("opt", sorted(R.OPTIMIZERS))
@pytest.mark.parametrize("layout", sorted(R.LAYOUTS))
def test_layout_parity_10_steps(runs, opt, layout):
    serial = runs["serial"][opt]["losses"]
    for r in runs["layouts"][(opt, layout)]:
        np.testing.assert_allclose(r["losses"], serial, rtol=1e-5)


@pytest.mark.parametrize("opt", sorted(R.OPTIMIZERS))
def test_resume_is_exact(runs, opt):
    """Saved at 5, resumed to 10: losses, weights, optimizer state and EMA bitwise."""
    full, resumed = runs["serial"][opt]["result"], runs["resumed"][opt]["result"]
    assert resumed["losses"] == full["losses"][5:]
    for (n, a), (_, b) in zip(full["model"].named_parameters(), resumed["model"].named_parameters()):
        assert torch.equal(a, b), n
    for a, b in zip(full["optimizer"].ema.tensors, resumed["optimizer"].ema.tensors):  # the EMA too
        assert torch.equal(a, b)
    for a, b in zip(full["optimizer"].rule.storages(), resumed["optimizer"].rule.storages()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("key", [("adafactor", "tp2"), ("muon", "dp2_zero1"), ("sgd", "pp2")])
def test_resume_at_another_layout_continues_the_serial_run(runs, key):
    """Adafactor's factored statistics saved at TP=2, Muon's momentum written by each Zero-1 owner,
    SGD's from two pipeline stages: all load serially and continue the serial run."""
    np.testing.assert_allclose(runs["cross"][key]["losses"], runs["serial"][key[0]]["losses"][5:], rtol=1e-5)


def test_switching_optimizer_on_resume_says_what_is_dropped(runs):
    """--load of an SGD checkpoint with --optimizer adafactor: one note line naming the dropped state
    (SGD's momentum_buffer) and that Adafactor starts fresh; none when the optimizer is the same."""
    from megatron_th.training.pretrain import pretrain

    half = f"{runs['root']}/sgd_serial_5"  # saved at 5 by SGD (tests/optim_runs.py)
    notes = {}
    for opt in ("sgd", "adafactor"):
        logs = []
        pretrain(parse_config(R.argv(runs["prefix"], runs["cache"], *R.COMMON, *R.OPTIMIZERS[opt], "--train-iters", "5",
                                     "--load", half))[0], log=logs.append)
        notes[opt] = [m for m in logs if m.startswith("note: --optimizer")]
    assert notes["sgd"] == []
    assert notes["adafactor"] == ["note: --optimizer adafactor: the checkpoint's sgd state (optim.momentum_buffer.*) "
                                  "is dropped; adafactor starts with fresh state (weights, fp32 masters and EMA load "
                                  "as saved)"]


@pytest.mark.parametrize("opt", sorted(R.OPTIMIZERS))
def test_state_bytes_equal_the_estimator(runs, opt):
    """training/memory.py storage_bytes of every rank after 10 steps (weights, gradients, masters,
    optimizer state + EMA) == the estimator's bytes for that rank (estimate/memory.py static_bytes
    through training/optimizers/state_bytes.py); on DP rank 0 also == estimate() itself."""
    from megatron_th.estimate import estimate
    from megatron_th.estimate.memory import grad_bytes, static_bytes
    from megatron_th.estimate.params import rank_params
    from megatron_th.training.optimizers.state_bytes import with_optimizer_state

    model = runs["serial"][opt]["result"]["model"]
    for lay, flags in [("serial", [])] + list(R.LAYOUTS.items()):
        ranks = [runs["serial"][opt]] if lay == "serial" else runs["layouts"][(opt, lay)]
        cfg = parse_config(R.argv(runs["prefix"], runs["cache"], *R.COMMON, *R.OPTIMIZERS[opt], *flags))[0]
        est = estimate(cfg, gpus=len(ranks), vocab_size=model.chunks[0].vocab_size, advise=False)["memory"]["ranks"]
        cfg, vp = finalize(cfg, len(ranks)), model.padded_vocab_size
        par = cfg.parallel
        dp = len(ranks) // (par.tensor_model_parallel_size * par.pipeline_model_parallel_size)
        for r in ranks:
            pp, dp_rank, _ = r["coords"]
            numels = [n for _, n in rank_params(cfg.model, par, vp, pp)]
            st = static_bytes(numels, "fp32", grad_bytes(cfg), dp, par.use_distributed_optimizer,
                              par.ddp_bucket_size, dp_rank)
            want = with_optimizer_state(st, cfg, vp, pp, dp, dp_rank)
            assert {k: want[k] for k in r["mem"]} == r["mem"], (lay, r["coords"])
            assert r["mem"]["ema"] == 4 * want["owned_numel"] > 0
            if dp_rank == 0:
                e = est[pp]
                assert (e["weights"], e["grads"], e["optimizer"]) == (
                    r["mem"]["params"], r["mem"]["grads"], r["mem"]["master"] + r["mem"]["moments"]), (lay, r["coords"])
        if lay == "dp2_zero1":  # the masters' EMA (and the optimizer state) split over the DP ranks
            owned = [r["mem"]["ema"] // 4 for r in ranks]
            assert min(owned) > 0 and (sum(owned) == ranks[0]["numel"] if opt in ("adafactor", "muon")
                                       else sum(owned) >= ranks[0]["numel"])  # flat: bucket padding


def test_optimizer_state_per_parameter_in_the_estimator():
    """Bytes per parameter the estimator reports for a 1.3B Llama-style model (bf16): AdamW 12,
    SGD 8, Adafactor ~4 (its factors are ~0), Muon between 8 and 12; +4 with an EMA. And whether
    it fits on one 24 GB GPU: with AdamW no, with Adafactor yes."""
    from megatron_th.estimate import estimate

    base = ["--num-layers", "24", "--hidden-size", "2048", "--num-attention-heads", "16", "--seq-length", "2048",
            "--position-embedding-type", "rope", "--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear",
            "--bf16", "--micro-batch-size", "1", "--global-batch-size", "16", "--recompute-granularity", "full"]
    got = {}
    for opt in ("adam", "sgd", "adafactor", "muon"):
        for ema in ((), ("--ema-decay", "0.999")):
            e = estimate(parse_config(base + ["--optimizer", opt, *ema])[0], gpus=1, gpu="a10", vocab_size=32000,
                         advise=False)
            bpp = e["memory"]["bytes_per_param"]
            got[(opt, bool(ema))] = (bpp["master"] + bpp["moments"], e["memory"]["fits"])
    assert got[("adam", False)] == (12.0, False)
    assert got[("sgd", False)][0] == 8.0
    assert 4.0 < got[("adafactor", False)][0] < 4.01 and got[("adafactor", False)][1] is True
    assert 8.0 < got[("muon", False)][0] < 12.0
    assert all(math.isclose(got[(o, True)][0], got[(o, False)][0] + 4) for o in ("adam", "sgd", "adafactor", "muon"))
