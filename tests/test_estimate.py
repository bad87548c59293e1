"""The estimator (megatron_th/estimate, tools/estimate.py) against published numbers, closed forms
and what training really allocates: tensor storage per rank, checkpoint files, saved activations."""
import copy
import json
import math
import os

import pytest
import torch

from megatron_th.config import Config, finalize, parse_config
from megatron_th.data.tokenizer import padded_vocab_size
from megatron_th.estimate import GiB, estimate, format_report
from megatron_th.estimate import activations as act
from megatron_th.estimate import memory, params, scaling
from megatron_th.estimate.hardware import get_gpu, match_device
from megatron_th.parallel.schedule_order import order, peak_inflight
from megatron_th.training.memory import analytic_bytes_per_param, saved_activation_bytes
from tests import dist as D
from tests.test_tensor_parallel import _data, argv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 8000  # the embedded tokenizer, which the tiny runs use


def model_cfg(world=1, **kw) -> Config:
    cfg = Config()
    for k, v in kw.items():
        for sec in (cfg.model, cfg.parallel, cfg.data, cfg.optim):
            if hasattr(sec, k):
                setattr(sec, k, v)
                break
        else:
            raise KeyError(k)
    return finalize(cfg, world)


GPT3 = dict(num_layers=96, hidden_size=12288, num_attention_heads=96, seq_length=2048, global_batch_size=1536,
            micro_batch_size=1, tensor_model_parallel_size=8, pipeline_model_parallel_size=16, fp16=True,
            recompute_granularity="full", attention_dropout=0.0)
# XGLM-7.5B's shape (Lin et al. 2021): 32 layers, h 4096, 32 heads, ffn 16384, vocab 256008, tied
XGLM = dict(num_layers=32, hidden_size=4096, num_attention_heads=32, ffn_hidden_size=16384, seq_length=2048,
            fp16=True, micro_batch_size=1, global_batch_size=1024)
# every architecture option of issue 15 at once (Gemma 3 + Qwen3 + Llama 3.1 shapes), head dim != h / heads
NEW_OPTIONS = dict(qk_layernorm=True, sandwich_norm=True, apply_layernorm_1p=True, swiglu=False, geglu=True,
                   openai_gelu=True, scale_embeddings=True, query_pre_attn_scalar=24.0, window_size=16,
                   rope_local_base_freq=10000.0, use_rope_scaling=True, rope_scaling_type="linear", kv_channels=24,
                   normalization="RMSNorm", position_embedding_type="rope", disable_bias_linear=True,
                   num_query_groups=2, hidden_dropout=0.0, attention_dropout=0.0)
SLIDING = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]


# ---------------------------------------------------------------------------------------------- FLOPs, bytes/param

def test_gpt3_175b_tflops_per_gpu_as_narayanan_report():
    cfg = model_cfg(1024, **GPT3)
    est = estimate(cfg, gpus=1024, gpu="a100-80g", vocab_size=51200)
    assert est["params"]["total"] == pytest.approx(175e9, rel=0.01)
    # 1024 A100, TP 8, PP 16, batch 1536, ~32 s per iteration (full recompute) -> 138 TFLOP/s per GPU
    tflops = est["flops"]["hardware_per_iteration"] / 32 / 1024 / 1e12
    assert tflops == pytest.approx(138, rel=0.03)
    assert est["flops"]["hardware_per_iteration"] / est["flops"]["model_per_iteration"] == pytest.approx(4 / 3, rel=0.01)
    # time at an assumed MFU: model FLOPs / (GPUs x peak x MFU)
    f = est["flops"]
    assert f["seconds_per_iteration"] == pytest.approx(f["model_per_iteration"] / (1024 * 312e12 * 0.4))
    assert f["gpu_hours"] == pytest.approx(f["seconds"] * 1024 / 3600)


def test_windowed_attention_flops_count_the_symmetric_band():
    from megatron_th.model.flops import attention_keys_per_query, flops_per_iteration

    for s, w in ((64, 1), (64, 16), (64, 63), (100, 37), (8, 8), (8, 50)):
        i, j = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        band = int(((i - j).abs() < min(w, s)).sum())  # the causal window |i - j| < W, mirrored
        causal = sum(min(w, p + 1) for p in range(s))   # keys query p really attends to
        assert attention_keys_per_query(s, w) * s == pytest.approx(band, rel=1e-12) == 2 * causal - s
    assert attention_keys_per_query(64, None) == 64  # Megatron's full s x s
    # per layer: 2 of 4 layers slide; a window >= s counts as a full layer; existing configs unchanged
    kw = dict(num_layers=4, hidden_size=64, num_attention_heads=4, seq_length=64, swiglu=True)
    full, slid = model_cfg(**kw).model, model_cfg(**kw, window_size=16,
                                                 layer_types=["sliding_attention", "full_attention"] * 2).model
    core = 4 * 4 * 16 * 8 * 64  # 4 heads x head dim 16, batch 8 x seq 64 tokens
    for rc, times in ((None, 3), ("selective", 4)):
        diff = flops_per_iteration(full, 8, 64, 1000, rc) - flops_per_iteration(slid, 8, 64, 1000, rc)
        assert diff == pytest.approx(times * 2 * core * (64 - attention_keys_per_query(64, 16)), rel=1e-12)
    long_window = model_cfg(**kw, window_size=64).model
    assert flops_per_iteration(long_window, 8, 64, 1000) == flops_per_iteration(full, 8, 64, 1000)
    # the chunked loss (4096 tokens > 384 per chunk) computes the logits again in backward: hardware FLOPs only
    est = estimate(model_cfg(**dict(kw, seq_length=4096), micro_batch_size=1, global_batch_size=8),
                   vocab_size=152064, advise=False)["flops"]
    assert est["loss_recomputes_logits"]
    assert est["hardware_per_iteration"] - est["model_per_iteration"] == pytest.approx(2 * 64 * 152064 * 8 * 4096)


@pytest.mark.parametrize("d", [1, 2, 4, 8, 64])
def test_bytes_per_param_equal_megatrons_table(d):
    for prec in ("bf16", "fp32"):
        for zero in (False, True):
            ours = memory.bytes_per_param(prec, d, zero, 4)["total"]
            assert ours == pytest.approx(analytic_bytes_per_param(prec, d, zero))
    assert memory.bytes_per_param("bf16", d, True, 4)["total"] == pytest.approx(6 + 12 / d)
    assert memory.bytes_per_param("bf16", d, False, 4)["total"] == 18
    # fp16: Megatron keeps fp32 gradient copies (20 -> 4 + 16/d); we do not (16 -> 4 + 12/d)
    assert analytic_bytes_per_param("fp16", d, True) == pytest.approx(4 + 16 / d)
    assert memory.bytes_per_param("fp16", d, True, 2)["total"] == pytest.approx(4 + 12 / d)


def test_seed_7_5b_checkpoint_size():
    cfg = model_cfg(4, **XGLM)
    est = estimate(cfg, gpus=4, vocab_size=256008, advise=False)
    n = est["params"]["total"]
    assert n == pytest.approx(7.5e9, rel=0.01)
    ds = est["checkpoint"]["deepspeed_fp16"]
    assert ds["total"] / GiB == pytest.approx(126, rel=0.05)   # measured by the seeds' authors
    assert ds["weights"] / GiB == pytest.approx(28, rel=0.05)
    assert ds["optimizer"] / GiB == pytest.approx(98, rel=0.05)
    ours = est["checkpoint"]["ours"]  # fp16 weights + fp32 master + 2 moments: 14 B/param
    assert ours["weights"] + ours["optimizer"] == 14 * n
    assert ours["total"] / GiB == pytest.approx(98, rel=0.05)


# ---------------------------------------------------------------------------------------------- activations

def test_korthikanti_formulas_with_megatrons_kernels():
    m = model_cfg(**dict(GPT3, recompute_granularity=None, attention_dropout=0.1, hidden_dropout=0.1,
                         tensor_model_parallel_size=1, pipeline_model_parallel_size=1)).model
    s, b, h, a, t = 2048, 1, 12288, 96, 8
    k = act.MEGATRON_KERNELS

    def total(**kw):
        return sum(act.layer_terms(m, s, b, k=k, **kw).values()) / (s * b * h)

    assert total() == pytest.approx(34 + 5 * a * s / h)
    assert total(tp=t) == pytest.approx(10 + 24 / t + 5 * a * s / (h * t))
    assert total(tp=t, sp=True) == pytest.approx(34 / t + 5 * a * s / (h * t))
    assert total(tp=t, sp=True, recompute="selective") == pytest.approx(34 / t)
    assert total(recompute="full") == pytest.approx(2)


BLOCKS = {
    "gpt2_layernorm_gelu_dropout": dict(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=64),
    "llama_rmsnorm_swiglu_gqa": dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                                     seq_length=64, swiglu=True, normalization="RMSNorm", position_embedding_type="rope",
                                     disable_bias_linear=True, untie_embeddings_and_output_weights=True,
                                     hidden_dropout=0.0, attention_dropout=0.0),
}
# QK-norm, sandwich and (1 + w) norms, GeGLU, scaled embeddings, a window on 2 of 3 layers with its own
# RoPE, head dim 24 != 64 / 4
EVERY_NEW_OPTION = dict(NEW_OPTIONS, num_layers=3, hidden_size=64, num_attention_heads=4, seq_length=64,
                        layer_types=SLIDING[:3])


@pytest.mark.parametrize("recompute", [None, "selective", "full"])
@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_activation_bytes_equal_what_autograd_saves(block, recompute):
    from megatron_th.model.gpt import build_model

    m = model_cfg(**BLOCKS[block], recompute_granularity=recompute, micro_batch_size=2, global_batch_size=2).model
    b, s, vocab = 2, m.seq_length, 1000
    model = build_model(m, vocab, seed=0)
    g = torch.Generator().manual_seed(0)
    inputs = {"tokens": torch.randint(0, vocab, (b, s), generator=g), "labels": torch.randint(0, vocab, (b, s), generator=g),
              "position_ids": torch.arange(s).repeat(b, 1)}
    measured = saved_activation_bytes(model, inputs, torch.ones(b, s))["activation_bytes"]
    k = act.kernels_for(m, "fp32", "cpu")
    vp = padded_vocab_size(vocab, m.make_vocab_size_divisible_by)
    predicted = sum(act.chunk_bytes(m, s, b, vocab, vp, 1, False, recompute, k, m.num_layers, True, True).values())
    assert predicted == pytest.approx(measured, rel=0.10)
    if recompute != "full":  # full recompute keeps the RoPE tables by reference, out of the hooks' sight
        assert predicted == pytest.approx(measured, rel=1e-4)


def test_peak_of_forward_and_backward_as_predicted():
    """The activation part of the estimated peak (in-flight activations + the larger of the loss's
    and, under full recompute, one re-run layer's transient) against the live-bytes peak of a real
    forward + backward counted by allocation (gradients preallocated so only activations count).
    Full recompute, where the re-run layer's activations are most of the peak (without recompute the
    saved activations are checked above)."""
    from megatron_th.estimate.footprint import rank_memory
    from megatron_th.model.gpt import build_model
    from megatron_th.utils.alloc_trace import record_live_bytes

    b, vocab = 2, 256
    cfg = model_cfg(**dict(BLOCKS["llama_rmsnorm_swiglu_gqa"], num_layers=3, hidden_size=64, seq_length=128),
                    recompute_granularity="full", micro_batch_size=b, global_batch_size=b)
    m, s = cfg.model, cfg.model.seq_length
    model = build_model(m, vocab, seed=0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    g = torch.Generator().manual_seed(0)
    inputs = {"tokens": torch.randint(0, vocab, (b, s), generator=g),
              "labels": torch.randint(0, vocab, (b, s), generator=g), "position_ids": torch.arange(s).repeat(b, 1)}
    with record_live_bytes("cpu") as rec:
        loss = model(**inputs)
        loss.sum().backward()
        del loss
    r = rank_memory(cfg, 1, vocab, device="cpu")[0]
    predicted = r["total"] - r["static"]
    assert predicted == pytest.approx(rec.peak_bytes, rel=0.05), (predicted, rec.peak_bytes, r["recompute_transient"])


@pytest.mark.parametrize("case", ["fp32", "fp32_selective", "bf16_attention_dropout_chunked_loss"])
def test_activation_bytes_with_every_new_option(monkeypatch, case):
    """The new options together (fp32, without and with selective recompute; the window's [s, s] mask
    kept on CPU), and in bf16 with attention dropout (CPU: the math path, in fp32) and the loss chunked
    (16-token chunks instead of 256 MiB): what autograd saves, to the byte but the cross entropy's
    4-byte scalar. (Full recompute: the Llama block above; the 111 and 211_sp runs below add a window,
    QK-norm and sandwich norms under TP + SP.)"""
    from megatron_th.model import loss as lm_loss
    from megatron_th.model.gpt import build_model

    b, vocab = 2, 1000
    kw, prec, recompute = dict(EVERY_NEW_OPTION), "fp32", None
    if case == "fp32_selective":
        recompute = "selective"
    elif case.startswith("bf16"):
        prec, kw["attention_dropout"] = "bf16", 0.1
        monkeypatch.setattr(lm_loss, "LOSS_CHUNK_BYTES", 16 * 1000 * 4)
    m = model_cfg(**kw, recompute_granularity=recompute, micro_batch_size=b, global_batch_size=b).model
    s = m.seq_length
    model = build_model(m, vocab, seed=0, dtype=torch.bfloat16 if prec == "bf16" else torch.float32)
    g = torch.Generator().manual_seed(0)
    inputs = {"tokens": torch.randint(0, vocab, (b, s), generator=g),
              "labels": torch.randint(0, vocab, (b, s), generator=g), "position_ids": torch.arange(s).repeat(b, 1)}
    measured = saved_activation_bytes(model, inputs, torch.ones(b, s))["activation_bytes"]
    vp = padded_vocab_size(vocab, m.make_vocab_size_divisible_by)
    k = act.kernels_for(m, prec, "cpu")
    parts = act.chunk_bytes(m, s, b, vocab, vp, 1, False, recompute, k, m.num_layers, True, True)
    assert abs(sum(parts.values()) - measured) <= 4
    terms = act.layer_terms(m, s, b, recompute=recompute, k=k, window=16)
    assert "q and k norms (QK-norm)" in terms and "post-attention and post-MLP norms (sandwich)" in terms


def test_loss_memory_as_predicted(monkeypatch):
    """Saved bytes + transient of the LM loss (estimate/loss_memory.py) against the live-bytes peak
    of its forward + backward counted by allocation on the meta device, at Qwen2.5's vocabulary and
    4096 tokens: chunked (TP 1: 384-token chunks; TP 2: 832) and, with a 16x larger chunk, unchunked."""
    from benchmarks.loss_memory import loss_fn
    from megatron_th.utils.alloc_trace import record_live_bytes
    from megatron_th.estimate import loss_memory
    from megatron_th.model import loss as lm_loss

    vocab, n, h = 152064, 4096, 1024
    for chunk_bytes, path in ((lm_loss.LOSS_CHUNK_BYTES, "chunked"), (16 * lm_loss.LOSS_CHUNK_BYTES, "unchunked")):
        for dtype, d in ((torch.bfloat16, 2), (torch.float32, 4)):
            for tp in (1, 2):
                rows = vocab // tp
                x = torch.empty(1, n, h, device="meta", dtype=dtype, requires_grad=True)
                w = torch.empty(rows, h, device="meta", dtype=dtype, requires_grad=True)
                labels = torch.empty(1, n, device="meta", dtype=torch.long)
                monkeypatch.setattr(lm_loss, "LOSS_CHUNK_BYTES", chunk_bytes)
                with record_live_bytes("meta") as rec:
                    loss = loss_fn("chunked", tp)(x, w, labels, min(vocab, rows))  # the model's path
                    loss.sum().backward()
                    del loss
                plan = loss_memory.loss_plan(n, vocab, vocab, tp)
                predicted = (sum(loss_memory.saved_terms(n, vocab, vocab, tp).values())
                             + loss_memory.transient_bytes(n, h, vocab, vocab, tp, d))
                assert plan["chunked"] == (path == "chunked")
                assert predicted == pytest.approx(rec.peak_bytes, rel=0.01), (path, dtype, tp)


def test_pipeline_inflight_micro_batches():
    # 1F1B: rank r holds min(p - r, m) micro-batches
    assert [act.inflight(4, r, 8, 1, [1.0])[1] for r in range(4)] == [4, 3, 2, 1]
    assert act.inflight(4, 0, 2, 1, [1.0])[1] == 2
    # interleaved: 2(p - r - 1) + (v - 1)p + 1 chunk activations; rank 0: L (1 + (p-1)/(p v)) layers' worth
    # (Megatron's factor on the 1F1B value of L layers: p micro-batches x L/p layers)
    for p, v, m in ((4, 2, 8), (4, 2, 64), (2, 4, 8), (8, 3, 96)):
        for r in range(p):
            peak, n = act.inflight(p, r, m, v, [1.0] * v)
            full = peak_inflight([{"op": kind} for kind, _ in order(p, r, m, v)])  # untruncated schedule
            assert n == peak == full == min(2 * (p - r - 1) + (v - 1) * p + 1, m * v)
        layers = 8 * p * v  # 8 layers per chunk
        assert act.inflight(p, 0, m, v, [8.0] * v)[0] == pytest.approx(layers * (1 + (p - 1) / (p * v)))


# ---------------------------------------------------------------------------------------------- Chinchilla

def test_chinchilla_closed_form_is_the_minimum():
    assert scaling.loss(7.5e9, 1.5e11) == pytest.approx(1.69 + 406.4 / 7.5e9 ** 0.34 + 410.7 / 1.5e11 ** 0.27)
    for c in (1e19, 1.27e21, 5.76e23):
        opt = scaling.compute_optimal(c)
        lo, hi = math.log(1e5), math.log(1e14)  # L(exp x) at 6ND = C is convex in x: ternary search
        for _ in range(300):
            a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
            if scaling.loss(math.exp(a), c / 6 / math.exp(a)) < scaling.loss(math.exp(b), c / 6 / math.exp(b)):
                hi = b
            else:
                lo = a
        n = math.exp((lo + hi) / 2)
        assert opt["params"] == pytest.approx(n, rel=1e-6)
        assert 6 * opt["params"] * opt["tokens"] == pytest.approx(c)
        assert opt["loss"] <= scaling.loss(opt["params"] * 1.1, c / 6 / (opt["params"] * 1.1))


# ---------------------------------------------------------------------------------------------- params, advice, CLI

@pytest.mark.parametrize("kw", [dict(), dict(untie_embeddings_and_output_weights=True, swiglu=True,
                                           normalization="RMSNorm", position_embedding_type="rope",
                                           disable_bias_linear=True, add_qkv_bias=True, num_query_groups=2),
                                dict(NEW_OPTIONS, layer_types=SLIDING),
                                dict(NEW_OPTIONS, layer_types=SLIDING, normalization="LayerNorm", geglu=False,
                                     swiglu=True, untie_embeddings_and_output_weights=True)])
def test_param_list_equals_the_model(kw):
    from megatron_th.model.gpt import GPTModel

    cfg = model_cfg(2, num_layers=4, hidden_size=64, num_attention_heads=4, pipeline_model_parallel_size=2,
                    micro_batch_size=1, global_batch_size=2, **kw)
    m, vp = cfg.model, padded_vocab_size(VOCAB, 128)
    with torch.device("meta"):
        whole = GPTModel(m, VOCAB)
        stages = [GPTModel(m, VOCAB, layer_range=(0, 2), pre_process=True, post_process=False),
                  GPTModel(m, VOCAB, layer_range=(2, 4), pre_process=False, post_process=True)]
    assert params.count(m, VOCAB)["total"] == sum(p.numel() for p in whole.parameters())
    for r, stage in enumerate(stages):
        assert params.rank_params(m, cfg.parallel, vp, r) == [(n, p.numel()) for n, p in stage.named_parameters()]


def test_advice_finds_zero1_for_the_seed_model_on_4_gpus():
    cfg = model_cfg(4, **XGLM)
    est = estimate(cfg, gpus=4, vocab_size=256008)
    assert not est["memory"]["fits"] and est["memory"]["peak"] > 80 * GiB  # 18 B/param alone is 126 GiB
    adv = est["advice"]
    assert adv["fits"] and adv["changes"] == {"use_distributed_optimizer": True}
    again = estimate(_with(cfg, use_distributed_optimizer=True), gpus=4, vocab_size=256008)
    assert again["memory"]["fits"] and again["memory"]["peak"] == adv["peak"]
    # 175B on 8 x A100 40GB: nothing fits, the report says so
    big = estimate(model_cfg(8, **dict(GPT3, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                                       global_batch_size=8)), gpus=8, gpu="a100-40g", vocab_size=51200)
    assert not big["advice"]["fits"] and "add GPUs" in format_report(big)


def _with(cfg, **kw):
    new = copy.deepcopy(cfg)
    for k, v in kw.items():
        setattr(new.parallel if hasattr(new.parallel, k) else new.model, k, v)
    return new


def test_gpu_catalog():
    assert (get_gpu("a100-80g").bf16, get_gpu("a100-80g").memory_gib) == (312.0, 80.0)
    assert (get_gpu("h100-80g").bf16, get_gpu("h200").memory_gib) == (989.0, 141.0)
    assert match_device("NVIDIA A100-SXM4-40GB").name == "a100-40g"
    assert match_device("NVIDIA A10").name == "a10" and match_device("NVIDIA H100 PCIe").name == "h100-pcie"
    with pytest.raises(ValueError, match="--gpu"):
        get_gpu("tpu-v5")


def test_cli_example_and_errors(capsys):
    from tools.estimate import main

    example = os.path.join(ROOT, "examples", "llama_7b_4xa100.yaml")
    assert main(["--config", example]) == 0
    out = capsys.readouterr().out
    assert "TP 2 x PP 2 x DP 1" in out and "6.74 B" in out and "fits in" in out and "GPU-hours" in out
    assert main(["--config", example, "--gpus", "8", "--gpu", "h100-80g", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["layout"]["dp"] == 2 and est["gpu"]["peak_tflops"] == 989.0 and est["model"]["vocab"] == 32000
    cfg, _ = parse_config(["--config", example])  # training reads the same file (estimate: ignored)
    assert finalize(cfg, 4).model.ffn_hidden_size == 11008
    for bad, flag in ((["--gpu", "tpu"], "--gpu"), (["--tokenizer-model", "/nonexistent.model"], "--vocab-size"),
                      (["--mfu", "2"], "--mfu"), (["--gpus", "3"], "--gpus 3"), (["--gpus", "0"], "--gpus 0"),
                      (["--micro-batch-size", "3"], "--micro-batch-size 3"),
                      (["--vocab-size", "32001", "--make-vocab-size-divisible-by", "1"], "--make-vocab-size-divisible-by")):
        args = bad if flag == "--vocab-size" else ["--config", example, *bad]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and flag in err and "\n" not in err


@pytest.mark.parametrize("recipe,params", [("cpt_qwen2.5_7b_thai.yaml", 7.616e9),
                                           ("cpt_llama3.1_8b_thai.yaml", 8.030e9)])
def test_cpt_recipes_parse_and_estimate(capsys, recipe, params):
    from tools.estimate import main

    path = os.path.join(ROOT, "examples", recipe)
    cfg = finalize(parse_config(["--config", path])[0], 8)  # as pretrain_gpt.py reads it, at world 8
    assert cfg.train.use_checkpoint_args and cfg.optim.lr <= 3e-5 and cfg.parallel.use_distributed_optimizer
    assert cfg.data.global_batch_size * cfg.model.seq_length == 2 ** 21  # 2M tokens per step
    assert [float(x) for x in cfg.data.data_path[::2]] == [0.75, 0.25]
    assert main(["--config", path, "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["params"]["total"] == pytest.approx(params, rel=1e-3)  # the published sizes: 7.62B, 8.03B
    assert est["layout"]["dp"] == 4 and est["memory"]["fits"] and est["model"]["loss"] == "chunked"


# ---------------------------------------------------------------------------------------------- measured per rank

LAYOUTS = {  # name -> (world, flags): (TP, PP, DP) = (1,1,1), (2,1,1), (1,2,1), (1,1,2) + Zero-1
    "111": (1, ["--window-size", "16", "--layer-types", "sliding_attention", "full_attention"]),  # seq 32
    # + QK-norm and sandwich norms: their parameters are replicated over TP, the post norms see sequence shards
    "211_sp": (2, ["--tensor-model-parallel-size", "2", "--sequence-parallel", "--hidden-dropout", "0.1",
                   "--qk-layernorm", "--sandwich-norm"]),
    "121_bf16": (2, ["--pipeline-model-parallel-size", "2", "--bf16"]),
    # odd-sized buckets (GeLU fc1 bias of 65) so Zero-1 pads them and the DP ranks own different amounts
    "112_zero_bf16": (2, ["--use-distributed-optimizer", "--bf16", "--ddp-bucket-size", "3000", "--no-swiglu",
                          "--ffn-hidden-size", "65", "--no-disable-bias-linear"]),
}
BASE = ["--num-query-groups", "4", "--global-batch-size", "8", "--micro-batch-size", "2", "--train-iters", "1",
        "--peak-tflops", "1"]  # no CPU matmul measurement for the MFU (seconds in bf16)


def _measure(rank, world, args, save):
    from megatron_th.training.memory import storage_bytes
    from megatron_th.training.pretrain import pretrain

    cfg, _ = parse_config(args + ["--save", save])
    out = pretrain(cfg, log=lambda *a: None)
    g = out["groups"]
    res = {"mem": storage_bytes(out["named_params"], out["optimizer"], out["buffers"]), "pp_rank": g.pp_rank,
           "dp_rank": g.dp_rank, "named": [(n, p.numel()) for n, p in out["named_params"]]}
    if g.pp == 1:  # activations of one micro-batch on this rank's model (TP ranks run it together)
        gen = torch.Generator().manual_seed(0)
        b, s = cfg.data.micro_batch_size, cfg.model.seq_length
        inputs = {"tokens": torch.randint(0, 300, (b, s), generator=gen),
                  "labels": torch.randint(0, 300, (b, s), generator=gen), "position_ids": torch.arange(s).repeat(b, 1)}
        res["activations"] = saved_activation_bytes(out["model"].chunks[0], inputs, torch.ones(b, s))["activation_bytes"]
    return res


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("estimate")
    prefix, cache = _data(tmp), str(tmp / "cache")
    out = {}
    for name, (world, flags) in LAYOUTS.items():
        args = argv(prefix, cache, *BASE, *flags)
        save = str(tmp / f"ck_{name}")
        ranks = [_measure(0, 1, args, save)] if world == 1 else D.run(_measure, world, args, save, timeout=300)
        out[name] = (args, world, ranks, save)
    return out


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_storage_per_rank_predicted_exactly(measured, name):
    args, world, ranks, _ = measured[name]
    cfg = finalize(parse_config(args)[0], world)
    lay = estimate(cfg, gpus=world, vocab_size=VOCAB, device="cpu", advise=False)["layout"]
    vp = padded_vocab_size(VOCAB, cfg.model.make_vocab_size_divisible_by)
    prec = memory.precision(cfg.optim)
    for r in ranks:
        named = params.rank_params(cfg.model, cfg.parallel, vp, r["pp_rank"])
        assert named == r["named"]  # names, local sizes and order: the gradient buffer layout follows them
        pred = memory.static_bytes([n for _, n in named], prec, memory.grad_bytes(cfg), lay["dp"], lay["zero1"],
                                   cfg.parallel.ddp_bucket_size, r["dp_rank"])
        assert {k: pred[k] for k in r["mem"]} == r["mem"]  # exact, bucket padding included


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_checkpoint_files_as_predicted(measured, name):
    args, world, _, save = measured[name]
    cfg = finalize(parse_config(args)[0], world)
    est = estimate(cfg, gpus=world, vocab_size=VOCAB, device="cpu", advise=False)
    ck = os.path.join(save, open(os.path.join(save, "latest")).read().strip())
    on_disk = sum(os.path.getsize(os.path.join(ck, f)) for f in os.listdir(ck) if f.endswith(".safetensors"))
    assert est["checkpoint"]["ours"]["total"] == pytest.approx(on_disk, rel=0.03)  # headers: a few hundred B/tensor


@pytest.mark.parametrize("name", ["111", "211_sp", "112_zero_bf16"])
def test_activations_per_rank_as_predicted(measured, name):
    args, world, ranks, _ = measured[name]
    cfg = finalize(parse_config(args)[0], world)
    m, lay = cfg.model, estimate(cfg, gpus=world, vocab_size=VOCAB, device="cpu", advise=False)["layout"]
    k = act.kernels_for(m, memory.precision(cfg.optim), "cpu")
    vp = padded_vocab_size(VOCAB, m.make_vocab_size_divisible_by)
    pred = sum(act.chunk_bytes(m, m.seq_length, lay["micro_batch_size"], VOCAB, vp, lay["tp"], lay["sequence_parallel"],
                               None, k, m.num_layers, True, True).values())
    for r in ranks:
        assert pred == pytest.approx(r["activations"], rel=0.10)  # the bar
        assert pred == pytest.approx(r["activations"], rel=1e-4)  # what the term-by-term count achieves
