#!/usr/bin/env python
"""Checkpoint save/load throughput for a ~500 MB model at (TP, PP, DP) = (1,1,1) and (2,2,2),
against a raw sequential write/read (with fsync) of the same number of bytes in the same run.
Prints a table and writes JSON. Not a test: nothing is asserted."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODEL = ["--num-layers", "8", "--hidden-size", "1152", "--num-attention-heads", "8", "--seq-length", "128",
         "--micro-batch-size", "1", "--global-batch-size", "2", "--position-embedding-type", "rope",
         "--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear", "--untie-embeddings-and-output-weights"]


def worker(save_dir: str, out_json: str, flags: list) -> None:
    """One rank: build its part of the model, save it, load it back; rank 0 reports timings."""
    import torch
    import torch.distributed as dist

    from megatron_th.config import finalize, parse_config
    from megatron_th.parallel.groups import ParallelGroups, init_distributed
    from megatron_th.parallel.stages import build_chunks
    from megatron_th.training.optimizer import MixedPrecisionOptimizer
    from megatron_th.training.resume import load_state, open_checkpoint, save_state

    _, world, device = init_distributed()
    cfg, _ = parse_config(MODEL + flags + ["--save", save_dir])
    finalize(cfg, world)
    p = cfg.parallel
    groups = ParallelGroups.build(p.tensor_model_parallel_size, p.pipeline_model_parallel_size)
    chunks = build_chunks(cfg, 8000, groups, device, torch.float32)
    opt = MixedPrecisionOptimizer(list(chunks.named_parameters()), cfg.optim)
    if dist.is_initialized():
        dist.barrier()
    t = time.perf_counter()
    path = save_state(cfg, chunks, opt, {"iteration": 1, "consumed_samples": 0, "skipped_iters": 0}, None,
                      groups=groups)
    save_s = time.perf_counter() - t
    os.system("sync")
    t = time.perf_counter()
    load_state(open_checkpoint(save_dir), chunks, opt, groups)
    if dist.is_initialized():
        dist.barrier()
    load_s = time.perf_counter() - t
    if groups.rank == 0:
        nbytes = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        with open(out_json, "w") as f:
            json.dump({"bytes": nbytes, "save_s": save_s, "load_s": load_s, "world": world}, f)


def raw_io(directory: str, nbytes: int) -> dict:
    """One sequential write with fsync and one read of nbytes."""
    buf = os.urandom(1 << 20) * 64  # 64 MiB block
    path = os.path.join(directory, "raw.bin")
    t = time.perf_counter()
    with open(path, "wb") as f:
        left = nbytes
        while left > 0:
            n = min(left, len(buf))
            f.write(buf[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass
    read_s = time.perf_counter() - t
    os.remove(path)
    return {"write_s": write_s, "read_s": read_s}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4:])
        return 0
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", default="benchmarks/results/checkpoint_io.json")
    a = p.parse_args()
    rows = []
    layouts = (("(1,1,1)", 1, []),
               ("(2,2,2) Zero-1", 8, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                                      "--use-distributed-optimizer"]))
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        for name, nproc, flags in layouts:
            save, out = os.path.join(tmp, "ck"), os.path.join(tmp, "out.json")
            env = dict(os.environ, OMP_NUM_THREADS="1")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                   os.path.abspath(__file__), "--worker", save, out, *flags]
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            res = json.load(open(out))
            raw = raw_io(tmp, res["bytes"])
            mb = res["bytes"] / 1e6
            row = {"layout": name, "mb": mb, "save_mb_s": mb / res["save_s"], "load_mb_s": mb / res["load_s"],
                   "raw_write_mb_s": mb / raw["write_s"], "raw_read_mb_s": mb / raw["read_s"]}
            row["save_vs_raw"] = row["save_mb_s"] / row["raw_write_mb_s"]
            row["load_vs_raw"] = row["load_mb_s"] / row["raw_read_mb_s"]
            rows.append(row)
            print(f"{name:16s} {mb:7.0f} MB  save {row['save_mb_s']:7.0f} MB/s ({row['save_vs_raw']:.2f}x raw)  "
                  f"load {row['load_mb_s']:7.0f} MB/s ({row['load_vs_raw']:.2f}x raw)", flush=True)
            shutil.rmtree(save, ignore_errors=True)
    print("\n| layout | size MB | save MB/s | raw write MB/s | save/raw | load MB/s | raw read MB/s | load/raw |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['mb']:.0f} | {r['save_mb_s']:.0f} | {r['raw_write_mb_s']:.0f} | "
              f"{r['save_vs_raw']:.2f}x | {r['load_mb_s']:.0f} | {r['raw_read_mb_s']:.0f} | {r['load_vs_raw']:.2f}x |")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
