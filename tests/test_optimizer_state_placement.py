"""Optimizer state after a checkpoint load lives where torch's own ``Optimizer.load_state_dict``
puts it (issue 13, fault 2).

Fused AdamW keeps ``step`` on the parameter's device and reads it inside the kernel; a ``step``
left on the CPU beside CUDA parameters fails at the first resumed step. No GPU here, so the
parameters live on the ``meta`` device, where fused AdamW also constructs: torch puts ``step`` on
``meta`` and the moments beside their master.
"""
import pytest
import torch

from megatron_th.config import OptimConfig
from megatron_th.training.optimizer import MixedPrecisionOptimizer


def _torch_placement(masters, saved):
    """Where torch itself puts each state entry: load the same state into a plain fused AdamW."""
    ref = torch.optim.AdamW([{"params": masters}], fused=True)
    sd = ref.state_dict()
    sd["state"] = {i: {k: v.clone() for k, v in st.items()} for i, st in enumerate(saved)}
    ref.load_state_dict(sd)
    return [{k: (v.device, v.dtype) for k, v in ref.state[m].items()} for m in masters]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loaded_state_lives_where_torch_puts_it(dtype):
    named = [("w", torch.nn.Parameter(torch.empty(4, 3, device="meta", dtype=dtype))),
             ("b", torch.nn.Parameter(torch.empty(3, device="meta", dtype=dtype)))]
    opt = MixedPrecisionOptimizer(named, OptimConfig())
    assert opt.opt.defaults.get("fused"), "the optimizer under test must be fused AdamW"
    tensors = {}
    for n, p in named:
        tensors[f"optim.exp_avg.{n}"] = torch.zeros(p.shape)
        tensors[f"optim.exp_avg_sq.{n}"] = torch.ones(p.shape)
        if dtype != torch.float32:
            tensors[f"optim.master.{n}"] = torch.zeros(p.shape)
    opt.load_state(tensors, {"step": 7, "loss_scaler": opt.scaler.state_dict()})
    saved = [{"step": torch.tensor(7.0), "exp_avg": torch.zeros(p.shape), "exp_avg_sq": torch.ones(p.shape)}
             for _, p in named]
    want = _torch_placement([torch.nn.Parameter(torch.empty(p.shape, device="meta")) for _, p in named], saved)
    got = [{k: (v.device, v.dtype) for k, v in opt.opt.state[m].items()} for m in opt.masters]
    assert got == want
    assert all(st["step"][0].type == "meta" for st in got), "fused AdamW reads step on the parameter's device"
    assert opt.num_steps == 7
