"""The runs tests/test_optimizers.py and tests/test_ema.py check, made once per session.

Serial runs in this process; the parallel layouts (DP=2 + Zero-1, TP=2, PP=2) in ONE spawned
group of 2 ranks, one after another. Every run trains the same tiny Llama-style model (GQA,
SwiGLU, tied embeddings) for 10 steps with an EMA (--ema-decay 0.9 --ema-start-iter 3) and saves
at iteration 10 (and 5 where a resume starts there); each rank also reports its measured state
bytes (training/memory.py). The group also evaluates, at TP=2, a checkpoint averaged from the
serial SGD run's iterations 5 and 10 (tools/average_checkpoints.py).
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

from tests import dist as D
from tests.test_tensor_parallel import _data, argv

OPTIMIZERS = {  # name -> flags (an LR per optimizer that moves the weights by a few % a step)
    "sgd": ["--optimizer", "sgd", "--lr", "0.3"],
    "adafactor": ["--optimizer", "adafactor", "--lr", "0.003"],
    "muon": ["--optimizer", "muon", "--lr", "0.0003", "--muon-fp32-matmul-prec", "high", "--muon-use-nesterov"],
}
LAYOUTS = {  # name -> flags for 2 ranks
    "dp2_zero1": ["--use-distributed-optimizer"],
    "tp2": ["--tensor-model-parallel-size", "2"],
    "pp2": ["--pipeline-model-parallel-size", "2"],
}
MODEL = ["--num-query-groups", "4", "--peak-tflops", "1"]  # a given MFU peak: no matmul timing per process
COMMON = [*MODEL, "--ema-decay", "0.9", "--ema-start-iter", "3"]


def train(args):
    from megatron_th.config import parse_config
    from megatron_th.training.memory import storage_bytes
    from megatron_th.training.pretrain import pretrain

    cfg, _ = parse_config(args)
    out = pretrain(cfg, log=lambda *a: None)
    g = out["groups"]
    return {"losses": out["losses"], "coords": (g.pp_rank, g.dp_rank, g.tp_rank),
            "mem": storage_bytes(out["named_params"], out["optimizer"], out["buffers"]),
            "numel": sum(p.numel() for _, p in out["named_params"]), "result": out}


CROSS = (("adafactor", "tp2"), ("muon", "dp2_zero1"), ("sgd", "pp2"))  # resumed serially from iteration 5


def _layouts_body(rank, world, prefix, cache, root):
    res = {}
    for opt, flags in OPTIMIZERS.items():
        for lay, lflags in LAYOUTS.items():
            keep5 = ["--save-interval", "5"] if (opt, lay) in CROSS else []
            r = train(argv(prefix, cache, *COMMON, *flags, *lflags, *keep5, "--train-iters", "10",
                           "--save", os.path.join(root, f"{opt}_{lay}")))
            r.pop("result")
            res[(opt, lay)] = r
    res["averaged_tp2"] = evaluate(argv(prefix, cache, *MODEL, "--tensor-model-parallel-size", "2",
                                        "--skip-train", "--load", os.path.join(root, "averaged")))
    return res


def evaluate(args) -> float:
    """The valid loss of --skip-train (the --load checkpoint's weights)."""
    from megatron_th.config import parse_config
    from megatron_th.training.pretrain import pretrain

    ev = pretrain(parse_config(args)[0], log=lambda *a: None)["eval"]
    return ev["lm_loss"] if ev is not None else None


def only_iteration(ck: str, iteration: int, dst: str) -> str:
    """A copy of checkpoint directory ``ck`` holding only ``iteration`` (what --load then resumes)."""
    name = f"iter_{iteration:07d}"
    shutil.copytree(os.path.join(ck, name), os.path.join(dst, name))
    with open(os.path.join(dst, "latest"), "w") as f:
        f.write(name)
    return dst


@functools.lru_cache(maxsize=None)
def runs() -> dict:
    """{"prefix", "cache", "root", "serial": {opt: run}, "resumed": {opt: run}, "layouts":
    {(opt, layout): [per-rank run]}, "cross": {(opt, layout): run resumed serially from that
    layout's iteration-5 checkpoint}}."""
    root = tempfile.mkdtemp(prefix="optim_runs_")
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # the session's checkpoints go when it ends
    prefix, cache = _data(_Path(root)), os.path.join(root, "cache")
    out = {"prefix": prefix, "cache": cache, "root": root, "serial": {}, "resumed": {}, "cross": {}}
    for opt, flags in OPTIMIZERS.items():
        ck = os.path.join(root, f"{opt}_serial")
        out["serial"][opt] = train(argv(prefix, cache, *COMMON, *flags, "--save-interval", "5", "--train-iters", "10",
                                        "--save", ck))
        half = only_iteration(ck, 5, os.path.join(root, f"{opt}_serial_5"))
        out["resumed"][opt] = train(argv(prefix, cache, *COMMON, *flags, "--train-iters", "10", "--load", half))
    from megatron_th.training.average import average_checkpoints

    average_checkpoints(os.path.join(root, "sgd_serial"), [5, 10], os.path.join(root, "averaged"), [1, 2],
                        log=lambda *a: None)
    out["averaged_serial"] = evaluate(argv(prefix, cache, *MODEL, "--skip-train", "--load",
                                           os.path.join(root, "averaged")))
    res = D.run(_layouts_body, 2, prefix, cache, root, timeout=600)
    out["averaged_tp2"] = [r.pop("averaged_tp2") for r in res]
    out["layouts"] = {k: [r[k] for r in res] for k in res[0]}
    for opt, lay in CROSS:
        half = only_iteration(os.path.join(root, f"{opt}_{lay}"), 5, os.path.join(root, f"{opt}_{lay}_5"))
        out["cross"][(opt, lay)] = train(argv(prefix, cache, *COMMON, *OPTIMIZERS[opt], "--train-iters", "10",
                                              "--load", half))
    return out


class _Path(str):
    """tests/test_tensor_parallel._data wants a path with ``/``."""

    def __truediv__(self, other):
        return _Path(os.path.join(self, other))
