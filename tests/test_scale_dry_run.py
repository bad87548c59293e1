"""Scale dry run (issue 13): ranks of Llama-3-8B at TP 8 x PP 4 (interleaved: 4 layers per virtual
stage, 2 chunks per rank) x DP 16 = 512 ranks, Zero-1, bf16, built by the training code itself on
the ``meta`` device (model/init.py ``skips_init``: no weights drawn) under torch's ``fake``
process-group backend. Parameters, gradient buffer, fp32 masters and Adam moments take exactly the
bytes ``tools/estimate.py`` predicts, and the whole run stays far below the memory of the model.

Adam moments: torch creates them at the first step (torch/optim/adam.py ``Adam._init_group``:
``exp_avg`` and ``exp_avg_sq`` = ``zeros_like(p, memory_format=torch.preserve_format)`` for every
tensor the optimizer updates, plus a 0-d ``step``), but fused AdamW refuses to step on meta
tensors. So the child makes exactly those entries for each slot's master (the tensors our AdamW
updates: under Zero-1, this DP rank's part of each bucket) and measures them with
training/memory.py ``storage_bytes``, as tests/test_estimate.py does for real runs; the estimator
defines moments the same way (two fp32 tensors per owned element, ``step`` not counted).

The child runs as its own process so that its peak RSS (``resource.getrusage``) is the dry run's.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD, TP, PP, DP = 512, 8, 4, 16
VOCAB = 128256
LLAMA3_8B = ["--num-layers", "32", "--hidden-size", "4096", "--num-attention-heads", "32", "--num-query-groups", "8",
             "--ffn-hidden-size", "14336", "--seq-length", "8192", "--position-embedding-type", "rope",
             "--rotary-base", "500000", "--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear",
             "--untie-embeddings-and-output-weights", "--hidden-dropout", "0", "--attention-dropout", "0",
             "--bf16", "--use-distributed-optimizer", "--tensor-model-parallel-size", str(TP),
             "--pipeline-model-parallel-size", str(PP), "--num-layers-per-virtual-pipeline-stage", "4",
             "--micro-batch-size", "1", "--global-batch-size", "512"]
# global rank -> (pp, dp, tp): grid[pp, dp, tp] (parallel/groups.py). The first two are ranks the
# estimator reports (DP rank 0, any TP rank); the third is the last DP rank, whose Zero-1 share
# memory.static_bytes computes for its own dp_rank (equal here: no bucket of this shape needs padding).
RANKS = {0: (0, 0, 0), 391: (3, 0, 7), 511: (3, 15, 7)}
MAX_RSS = 2 * 2 ** 30


def dry_run() -> dict:
    """In this process: the estimate (tools/estimate.py --json) and, for each rank of RANKS, the
    meta build's parameter list and storage bytes, plus the largest CPU allocation made while
    building and this process's peak RSS (bytes)."""
    import contextlib
    import io
    import resource
    import runpy

    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    from megatron_th.config import finalize, parse_config
    from megatron_th.parallel.groups import ParallelGroups
    from megatron_th.parallel.stages import build_chunks
    from megatron_th.training.memory import storage_bytes
    from megatron_th.training.optimizer import MixedPrecisionOptimizer
    from megatron_th.training.pretrain import make_grad_buffers
    from megatron_th.utils.alloc_trace import record_allocations

    cli = runpy.run_path(os.path.join(ROOT, "tools", "estimate.py"))
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert cli["main"](LLAMA3_8B + ["--gpus", str(WORLD), "--vocab-size", str(VOCAB), "--json"]) == 0
    out = {"estimate": json.loads(text.getvalue()), "ranks": {}}
    cfg = finalize(parse_config(LLAMA3_8B)[0], WORLD)
    for rank in RANKS:
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=WORLD)
        try:
            groups = ParallelGroups.build(TP, PP)
            with record_allocations(device="cpu") as rec:
                core = build_chunks(cfg, VOCAB, groups, torch.device("meta"), torch.bfloat16)
                named = list(core.named_parameters())
                buffers = make_grad_buffers(cfg, named, groups)
                opt = MixedPrecisionOptimizer(named, cfg.optim, buffers)
            for s in opt.slots:  # what Adam._init_group makes at the first step (see the module doc)
                opt.opt.state[s.master] = {
                    "step": torch.zeros((), dtype=torch.float32, device=s.master.device),
                    "exp_avg": torch.zeros_like(s.master, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(s.master, memory_format=torch.preserve_format)}
            out["ranks"][rank] = {
                "coords": [groups.pp_rank, groups.dp_rank, groups.tp_rank], "chunks": len(core.chunks),
                "named": [[n, p.numel()] for n, p in named],
                "kinds": sorted({f"{t.device.type}:{t.dtype}" for t in [p for _, p in named] + opt.masters}),
                "mem": storage_bytes(named, opt, buffers), "cpu_max_alloc": rec.max_bytes}
        finally:
            dist.destroy_process_group()
    out["max_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return out


def test_llama3_8b_on_512_ranks_takes_the_estimated_bytes():
    from megatron_th.config import finalize, parse_config
    from megatron_th.estimate import memory, params

    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["max_rss"] < MAX_RSS, f"peak RSS {res['max_rss'] / 2 ** 20:.0f} MiB"

    est = res["estimate"]
    assert est["layout"] == dict(est["layout"], tp=TP, pp=PP, dp=DP, virtual_stages=2, zero1=True)
    assert est["model"]["padded_vocab"] == VOCAB and est["model"]["precision"] == "bf16"
    cfg = finalize(parse_config(LLAMA3_8B)[0], WORLD)
    by_pp = {r["pp_rank"]: r for r in est["memory"]["ranks"]}
    for rank, (pp, dp, tp) in RANKS.items():
        got = res["ranks"][str(rank)]
        assert got["coords"] == [pp, dp, tp] and got["chunks"] == 2
        assert got["kinds"] == ["meta:torch.bfloat16", "meta:torch.float32"]  # bf16 params, fp32 masters
        assert got["cpu_max_alloc"] < 2 ** 20, "weights were drawn on the host"
        # the estimator's parameter list: names, local sizes and order (the bucket layout follows it)
        assert [tuple(x) for x in got["named"]] == params.rank_params(cfg.model, cfg.parallel, VOCAB, pp)
        mem = got["mem"]
        if dp == 0:  # tools/estimate.py reports DP rank 0 of each stage
            pred = by_pp[pp]
            assert sum(n for _, n in got["named"]) == pred["params"]
            assert {k: mem[k] for k in ("params", "grads", "master", "moments")} == \
                {"params": pred["weights"], "grads": pred["grads"], "master": pred["master"],
                 "moments": pred["moments"]}, (rank, mem, pred)
        else:  # the same calculation for another DP rank's share
            pred = memory.static_bytes([n for _, n in got["named"]], "bf16", 4, DP, True, None, dp)
            assert {k: pred[k] for k in ("params", "grads", "master", "moments")} == \
                {k: mem[k] for k in ("params", "grads", "master", "moments")}, (rank, mem, pred)
    first, last = res["ranks"]["0"]["named"], res["ranks"]["391"]["named"]
    assert first[0][0] == "embedding.word_embeddings.weight" and last[-1][0] == "output_layer.weight"


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    print(json.dumps(dry_run()))
