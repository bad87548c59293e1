"""--compile (training/compile.py): each transformer layer is one dynamo graph (no graph break),
compiled once for every micro-batch's document layout, with the model's options (GQA, QK-norm,
sandwich norms, sliding windows with local RoPE) and under tensor / sequence parallelism, where
the TP collectives are traced and counted exactly as in eager steps.

Dynamo's "eager" backend keeps the tests fast (training uses inductor); TP runs in one process
on torch's fake process group (collectives do nothing; the graphs are what is checked)."""
import pytest
import torch

from megatron_th.config import Config, ConfigError, finalize
from megatron_th.model.documents import DocumentPlan


def _cfg(seq, world=1, **model):
    cfg = Config()
    m = cfg.model
    m.num_layers, m.hidden_size, m.num_attention_heads, m.num_query_groups, m.seq_length = 2, 32, 4, 2, seq
    m.ffn_hidden_size, m.make_vocab_size_divisible_by = 64, 64
    m.position_embedding_type, m.normalization, m.swiglu, m.disable_bias_linear = "rope", "RMSNorm", True, True
    m.hidden_dropout = m.attention_dropout = 0.0
    for k, v in model.items():
        setattr(m, k, v)
    finalize(cfg, world)
    return cfg


def _layouts(b, s, cuts):
    """cu_seqlens with the same document cuts in every row."""
    return [torch.tensor(sorted({r * s + c for r in range(b) for c in [0, *cut]} | {b * s}), dtype=torch.int32)
            for cut in cuts]


def _step(model, tokens, cu):
    b, s = tokens.shape
    plan = None if cu is None else DocumentPlan(cu, b, s)
    loss = model(tokens=tokens, labels=tokens, documents=plan).sum()
    loss.backward()
    return loss.detach()


def _grads(model):
    out = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out


def test_layers_compile_once_for_every_document_layout():
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    from megatron_th.model.gpt import build_model
    from megatron_th.training.compile import compile_layers

    torch._dynamo.reset()
    counters.clear()
    # Gemma-3-like options: sliding layers (window 6) with their local RoPE, QK-norm, sandwich norms
    cfg = _cfg(48, qk_layernorm=True, sandwich_norm=True, window_size=6, rope_local_base_freq=10000.0)
    eager, compiled = (build_model(cfg.model, 100, seed=1) for _ in range(2))
    cc = CompileCounterWithBackend("eager")
    assert compile_layers([compiled], backend=cc) == 2
    tokens = torch.randint(0, 100, (2, 48), generator=torch.Generator().manual_seed(0))
    # every layout has other varlen group shapes (documents of 5..40 tokens)
    cus = _layouts(2, 48, [(5, 20), (12,), (3, 9, 30, 40)])
    frames = []
    for cu in cus:
        want, got = _step(eager, tokens, cu), _step(compiled, tokens, cu)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        ge, gc = _grads(eager), _grads(compiled)
        for n in ge:
            torch.testing.assert_close(gc[n], ge[n], rtol=1e-5, atol=1e-6, msg=n)
        frames.append(cc.frame_count)
    assert dict(counters["graph_break"]) == {}
    assert frames == [1, 1, 1], frames  # one graph for every layer and every layout


@pytest.fixture
def fake_tp2():
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from megatron_th.parallel import comm
    from megatron_th.parallel.groups import ParallelGroups

    dist.init_process_group("fake", rank=0, world_size=2, store=FakeStore())
    try:
        groups = ParallelGroups.build(2, 1)
        comm.GROUP_NAMES.setdefault(groups.tp_group, "tp")
        yield groups
    finally:
        dist.destroy_process_group()


def test_tensor_and_sequence_parallel_layers_compile_without_breaks(fake_tp2):
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    from megatron_th.model.gpt import GPTModel
    from megatron_th.model.parallelize import parallelize
    from megatron_th.parallel.comm import COUNTER
    from megatron_th.training.compile import check_compile, compile_layers

    tokens = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    for sp, cu in ((False, None), (True, _layouts(2, 16, [(5,)])[0])):
        torch._dynamo.reset()  # one layout per process in training: no shapes carried over
        counters.clear()
        cfg = _cfg(16, world=2, qk_layernorm=True)
        models = []
        for _ in range(2):
            with torch.device("meta"):
                meta = GPTModel(cfg.model, 100)
            models.append(parallelize(meta, fake_tp2, cfg.model, 1, sp, torch.float32, "cpu"))
        eager, compiled = models
        cc = CompileCounterWithBackend("eager")
        compile_layers([compiled], backend=cc)
        sent = []
        for model in (eager, compiled):
            COUNTER.reset()
            loss = _step(model, tokens, cu)
            sent.append((dict(COUNTER.bytes), dict(COUNTER.calls), loss))
        assert cc.frame_count == 1, (sp, cc.frame_count)
        assert dict(counters["graph_break"]) == {}, sp
        # the compiled step ran (and counted) every collective of the eager one: forward and backward
        assert sent[1][:2] == sent[0][:2] and sent[0][0][("all_gather" if sp else "all_reduce", "tp")] > 0, sent
        torch.testing.assert_close(sent[1][2], sent[0][2])
    cfg = _cfg(16, world=2, attention_dropout=0.1)
    with pytest.raises(ConfigError, match="--attention-dropout 0"):
        check_compile(cfg, 2)
    check_compile(cfg, 1)
