"""The production model equals the plain reference; init depends only on (seed, config, name)."""
import pytest
import torch

from megatron_th.config import Config, ConfigError, finalize, parse_config
from megatron_th.model.flops import flops_per_iteration
from megatron_th.model.gpt import build_model
from megatron_th.model.init import init_tensor
from megatron_th.model.reference import ReferenceGPT

VOCAB = 300

VARIANTS = {
    "llama_gqa_tied": dict(position_embedding_type="rope", normalization="RMSNorm", swiglu=True,
                           disable_bias_linear=True, num_query_groups=2),
    "llama_mha_untied": dict(position_embedding_type="rope", normalization="RMSNorm", swiglu=True,
                             disable_bias_linear=True, untie_embeddings_and_output_weights=True,
                             rotary_base=500000),
    "qwen_qkv_bias_mqa": dict(position_embedding_type="rope", normalization="RMSNorm", swiglu=True,
                              disable_bias_linear=True, add_qkv_bias=True, num_query_groups=1),
    "gpt2": dict(openai_gelu=True),
}


def model_cfg(**kw):
    cfg = Config()
    m = cfg.model
    m.num_layers, m.hidden_size, m.num_attention_heads, m.seq_length = 2, 64, 4, 32
    m.hidden_dropout = m.attention_dropout = 0.0
    m.make_vocab_size_divisible_by = 128
    for k, v in kw.items():
        setattr(m, k, v)
    finalize(cfg)
    return cfg.model


def batch(b=3, s=32, seed=0, docs=True):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, VOCAB, (b, s), generator=g)
    labels = torch.randint(0, VOCAB, (b, s), generator=g)
    if not docs:
        return tokens, labels, None, None, None
    cut = [[0, 5, 6, 20], [0], [0, 31]]  # document starts per row
    doc = torch.zeros(b, s, dtype=torch.long)
    pos = torch.zeros(b, s, dtype=torch.long)
    cu = []
    for r, starts in enumerate(cut[:b]):
        bounds = starts + [s]
        for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            doc[r, lo:hi] = i
            pos[r, lo:hi] = torch.arange(hi - lo)
            cu.append(r * s + lo)
    cu.append(b * s)
    return tokens, labels, pos, doc, torch.tensor(cu, dtype=torch.int32)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_production_equals_reference(variant):
    m = model_cfg(**VARIANTS[variant])
    model = build_model(m, VOCAB, seed=3)
    ref = ReferenceGPT(m, VOCAB)
    ref.load_state_dict(model.state_dict(), strict=True)
    tokens, labels, pos, doc, cu = batch()
    # document-masked, positions reset
    out = model(tokens=tokens, position_ids=pos, cu_seqlens=cu, labels=labels)
    exp = ref(tokens, pos, doc, labels)
    torch.testing.assert_close(out, exp, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    exp.sum().backward()
    ref_grads = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n].grad, rtol=1e-4, atol=1e-6, msg=n)
    # plain causal logits, vocab padding dropped
    logits = model(tokens=tokens)
    assert logits.shape == (3, 32, VOCAB)
    torch.testing.assert_close(logits, ref(tokens), rtol=1e-5, atol=1e-5)


def test_recompute_gives_identical_grads():
    base = model_cfg(**VARIANTS["llama_gqa_tied"])
    tokens, labels, pos, _, cu = batch()
    grads = []
    for gran in (None, "full", "selective"):
        base.recompute_granularity = gran
        model = build_model(base, VOCAB, seed=1)
        model(tokens=tokens, position_ids=pos, cu_seqlens=cu, labels=labels).sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_backward_builds_no_zero_filled_logit_or_qkv_gradients():
    """Speed (issue 19): q, k, v leave the fused projection by one split (its backward: one cat),
    not a slice and two selects (each a zero-filled qkv-sized gradient); the loss's log-softmax
    backward writes into the nll gradient instead of a second [N, V] buffer. Values: the tests above."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names, self.qkv_zero_fills, self.out_of_place_logsoftmax_grads = [], 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            self.names.append(func.__name__)
            if func.__name__ in ("select_backward.default", "slice_backward.default") and len(args[1]) == 5:
                self.qkv_zero_fills += 1  # the [b, s, groups, q_per_group + 2, hd] view of qkv
            if func.__name__.startswith("_log_softmax_backward_data") and kwargs.get("out") is not args[0]:
                self.out_of_place_logsoftmax_grads += 1
            return func(*args, **kwargs)

    for variant in ("llama_gqa_tied", "qwen_qkv_bias_mqa", "gpt2"):
        m = model_cfg(**VARIANTS[variant])
        model = build_model(m, VOCAB, seed=1)
        tokens, labels, pos, _, _ = batch(docs=False)
        loss = model(tokens=tokens, position_ids=pos, labels=labels).sum()
        with Ops() as ops:
            loss.backward()
        assert ops.qkv_zero_fills == 0 and "cat.default" in ops.names, variant
        assert ops.out_of_place_logsoftmax_grads == 0 and any(n.startswith("_log_softmax_backward") for n in ops.names)


def test_init_depends_only_on_seed_config_and_name():
    m = model_cfg(**VARIANTS["llama_gqa_tied"])
    a, b, c = build_model(m, VOCAB, 7), build_model(m, VOCAB, 7), build_model(m, VOCAB, 8)
    for (n, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q)
        assert n.endswith("layernorm.weight") or n.endswith("norm.weight") or not torch.equal(p, r), n
    # a pipeline stage holds exactly the layers of the whole model; the tied head copy too
    last = build_model(m, VOCAB, 7, layer_range=(1, 2), pre_process=False, post_process=True)
    whole = dict(a.named_parameters())
    for n, p in last.named_parameters():
        assert torch.equal(p, whole[n]), n
    assert "embedding.word_embeddings.weight" in dict(last.named_parameters())
    assert "embedding.position_embeddings.weight" not in dict(last.named_parameters())
    std = init_tensor("layers.0.mlp.linear_fc2.weight", (64, 4096), m, 0).std().item()
    assert abs(std - 0.02 / 2) < 1e-3  # output layers scaled by 1/sqrt(2L), L = 2


def test_padded_vocab_never_depends_on_layout():
    m = model_cfg()
    model = build_model(m, 1000, seed=0)
    assert model.embedding.word_embeddings.weight.shape[0] == 1024


def test_config_errors_name_the_flag(tmp_path):
    cases = [
        (["--hidden-size", "100", "--num-attention-heads", "3"], "--hidden-size 100 is not divisible by --num-attention-heads 3"),
        (["--num-attention-heads", "4", "--num-query-groups", "3"], "--num-query-groups 3"),
        (["--global-batch-size", "10", "--micro-batch-size", "4"], "--global-batch-size 10 is not divisible"),
        (["--bf16", "--fp16"], "--bf16 and --fp16"),
        (["--num-layers", "3", "--pipeline-model-parallel-size", "2"], "--num-layers 3 is not divisible"),
    ]
    for argv, msg in cases:
        cfg, _ = parse_config(argv)
        with pytest.raises(ConfigError, match=msg.replace("-", r"\-")):
            finalize(cfg, world_size=2 if "--pipeline-model-parallel-size" in argv else 1)
    y = tmp_path / "c.yaml"
    y.write_text("model:\n  num_layers: 4\n  hiden_size: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'hiden_size'"):
        parse_config(["--config", str(y)])
    y.write_text("num_layers: four\n")
    with pytest.raises(ConfigError, match="num_layers must be int"):
        parse_config(["--config", str(y)])
    with pytest.raises(SystemExit):
        parse_config(["--no-such-flag"])


def test_flag_overrides_yaml_and_sections_or_flat(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("model:\n  num_layers: 4\n  hidden_size: 96\nlr: 0.5\nbf16: true\n")
    cfg, _ = parse_config(["--config", str(y), "--num-layers", "6", "--no-bf16"])
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.optim.lr, cfg.optim.bf16) == (6, 96, 0.5, False)


def test_flops_formula_matches_megatron():
    cfg = Config()
    m = cfg.model
    m.num_layers, m.hidden_size, m.num_attention_heads, m.seq_length = 96, 12288, 96, 2048
    finalize(cfg)
    B, s, l, h, V = 1536, 2048, 96, 12288, 51200
    megatron = 96 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h))
    assert flops_per_iteration(m, B, s, V, recompute=True) == pytest.approx(megatron, rel=1e-12)
    # GPT-3 175B on 1024 A100 at 32 s/iteration: the paper's ~138 TFLOP/s per GPU
    assert flops_per_iteration(m, B, s, V, recompute=True) / 32 / 1024 / 1e12 == pytest.approx(138, rel=0.01)
