"""LR schedules at chosen steps; AdamW with fp32 masters; fp16 loss scaling; non-finite skips."""
import math

import pytest
import torch

from megatron_th.config import OptimConfig
from megatron_th.training.optimizer import LossScaler, MixedPrecisionOptimizer
from megatron_th.training.schedules import LRSchedule


def sched(style, **kw):
    args = dict(lr=1.0, min_lr=0.1, style=style, warmup=10, decay_iters=110)
    args.update(kw)
    return LRSchedule(**args)


@pytest.mark.parametrize("style,checks", [
    ("constant", {1: 0.1, 10: 1.0, 60: 1.0, 500: 1.0}),
    ("linear", {5: 0.5, 10: 1.0, 60: 0.55, 110: 0.1, 111: 0.1, 1000: 0.1}),
    ("cosine", {10: 1.0, 60: 0.55, 35: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)), 110: 0.1, 200: 0.1}),
    ("inverse-square-root", {10: 1.0, 40: 0.5, 1000: 0.1}),
    ("WSD", {10: 1.0, 100: 1.0, 105: 0.55, 110: 0.1, 120: 0.1}),
])
def test_schedules_at_chosen_steps(style, checks):
    s = sched(style)
    for it, lr in checks.items():
        assert s.lr_at(it) == pytest.approx(lr, rel=1e-12), (style, it)


def test_schedule_does_not_depend_on_train_iters():
    # the LR at step 50 is a function of warmup/decay iters only: nothing else is an input
    assert sched("cosine").lr_at(50) == sched("cosine").lr_at(50)
    assert sched("cosine", decay_iters=210).lr_at(50) != sched("cosine").lr_at(50)
    with pytest.raises(ValueError, match="--lr-decay-style"):
        sched("exponential")


def test_loss_scaler_hysteresis_and_growth():
    s = LossScaler(initial=1024, min_scale=1, window=3, hysteresis=2)
    s.update(True)
    assert s.scale == 1024  # first overflow absorbed by hysteresis
    s.update(True)
    assert s.scale == 512
    for _ in range(3):
        s.update(False)
    assert s.scale == 1024 and s.hysteresis_tracker == 2
    for _ in range(20):
        s.update(True)
    assert s.scale == 1.0  # never below min
    static = LossScaler(dynamic=False)
    static.update(True)
    assert static.scale == 1.0


def _params(dtype):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3).to(dtype))
    b = torch.nn.Parameter(torch.randn(3).to(dtype))
    return [("w", w), ("b", b)]


def test_fp32_step_matches_torch_adamw():
    o = OptimConfig(weight_decay=0.1, clip_grad=0.0)
    named = _params(torch.float32)
    ref = [p.detach().clone().requires_grad_(True) for _, p in named]
    opt = MixedPrecisionOptimizer(named, o)
    torch_opt = torch.optim.AdamW([{"params": [ref[0]], "weight_decay": 0.1}, {"params": [ref[1]], "weight_decay": 0.0}],
                                  lr=0.01, betas=(0.9, 0.95), eps=1e-8)
    for step in range(3):
        for (_, p), r in zip(named, ref):
            g = torch.full_like(p, 0.5 + step)
            p.grad, r.grad = g.clone(), g.clone()
        ok, norm = opt.step(0.01)
        torch_opt.step()
        assert ok and norm == pytest.approx(math.sqrt(15 * (0.5 + step) ** 2), rel=1e-6)
    for (_, p), r in zip(named, ref):
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)


def test_clipping_scales_to_clip_norm():
    o = OptimConfig(clip_grad=1.0, lr=0.0)
    named = _params(torch.float32)
    opt = MixedPrecisionOptimizer(named, o)
    for _, p in named:
        p.grad = torch.full_like(p, 10.0)
    masters = opt.masters
    opt._gather_grads()
    norm = opt.grad_norm()
    assert norm == pytest.approx(10 * math.sqrt(15))
    for _, p in named:
        p.grad = torch.full_like(p, 10.0)
    before = [p.detach().clone() for _, p in named]
    ok, _ = opt.step(1e-3)
    assert ok and all(not torch.equal(a, p) for a, (_, p) in zip(before, named))
    assert masters[0] is named[0][1]  # fp32: no copy


def test_bf16_keeps_fp32_masters():
    named = _params(torch.bfloat16)
    opt = MixedPrecisionOptimizer(named, OptimConfig(bf16=True, clip_grad=0.0))
    assert all(m.dtype == torch.float32 and m is not p for m, (_, p) in zip(opt.masters, named))
    tiny = 1e-4  # below bf16 resolution of the weights: accumulates in the master only
    for _ in range(3):
        for _, p in named:
            p.grad = torch.ones_like(p)
        opt.step(tiny)
    assert any(not torch.equal(m.to(torch.bfloat16).float(), m) for m in opt.masters)
    for m, (_, p) in zip(opt.masters, named):
        assert torch.equal(p, m.to(torch.bfloat16))


def test_fp16_overflow_skips_and_lowers_scale():
    named = _params(torch.float16)
    o = OptimConfig(fp16=True, initial_loss_scale=2.0 ** 10, hysteresis=1)
    opt = MixedPrecisionOptimizer(named, o)
    before = [p.detach().clone() for _, p in named]
    named[0][1].grad = torch.full_like(named[0][1], float("inf"))
    named[1][1].grad = torch.ones_like(named[1][1])
    ok, norm = opt.step(1.0)
    assert not ok and not math.isfinite(norm)
    assert opt.loss_scale == 2.0 ** 9
    assert all(torch.equal(a, p) for a, (_, p) in zip(before, named))
    # a finite, scaled gradient is unscaled before the step
    for _, p in named:
        p.grad = torch.full_like(p, 2.0 ** 9 * 0.25)
    opt._gather_grads()
    assert torch.all(opt.masters[0].grad == 0.25)


def test_nan_gradient_skips_in_fp32():
    named = _params(torch.float32)
    opt = MixedPrecisionOptimizer(named, OptimConfig())
    before = [p.detach().clone() for _, p in named]
    named[0][1].grad = torch.full_like(named[0][1], float("nan"))
    ok, _ = opt.step(1.0)
    assert not ok and all(torch.equal(a, p) for a, (_, p) in zip(before, named))
