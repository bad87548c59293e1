"""Cluster filesystems (issue 13, faults 5 and 6): dataset index caches and checkpoints.

No file locks (Lustre may lack flock), one rank decides or builds and broadcasts over a gloo
group, every rank checks what it can see (node-local storage), and a non-shared or read-only
directory is one clear error on every rank. The distributed checks all run in one spawn of 2
ranks (``cluster`` fixture); a node-local filesystem is modelled by giving rank 1 a different
directory than rank 0 for the "same" path, a second node by setting its LOCAL_RANK to 0.
"""
import builtins
import errno
import os

import numpy as np
import pytest

from megatron_th.data.indexed import IndexedDatasetBuilder
from tests import dist as D


def _make_data(directory) -> str:
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    prefix = os.path.join(str(directory), "syn")
    with IndexedDatasetBuilder(prefix) as b:
        for _ in range(300):
            b.add_document(np.append(rng.integers(5, 300, size=rng.integers(5, 60)), 2))
    return prefix


def _argv(prefix, *extra):
    return ["--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
            "--micro-batch-size", "1", "--global-batch-size", "2", "--data-path", prefix, "--lr", "1e-3",
            "--log-interval", "1", "--num-threads", "1", "--split", "1,0,0", "--peak-tflops", "1", *extra]


class _Opens:
    """Records the files under ``root`` opened, as (how, path): "open" (builtins.open) or "safe"
    (safetensors' safe_open, how the reader reads tensors)."""

    def __init__(self, root):
        self.root, self.calls = os.path.realpath(root), []

    def __enter__(self):
        from megatron_th.training import checkpoint as ck

        self._open, self._safe = builtins.open, ck.safe_open

        def rec(how, path):
            if isinstance(path, (str, os.PathLike)) and os.path.realpath(path).startswith(self.root + os.sep):
                self.calls.append((how, os.path.relpath(os.path.realpath(path), self.root)))

        def open_(file, *a, **k):
            rec("open", file)
            return self._open(file, *a, **k)

        def safe_open(file, *a, **k):
            rec("safe", file)
            return self._safe(file, *a, **k)

        builtins.open, ck.safe_open = open_, safe_open
        return self

    def __exit__(self, *exc):
        from megatron_th.training import checkpoint as ck

        builtins.open, ck.safe_open = self._open, self._safe


def _errors(fn):
    """(class name, message) of what fn() raises, or None."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return type(e).__name__, str(e)
    return None


def _arange(i):
    import torch

    return torch.arange(4 * (i + 1), dtype=torch.float32) + i


# -- the checks, run in order inside one spawn; each returns what the tests assert on -----------

class _HashesData:
    """Counts how often gpt_dataset hashes the whole sizes array (the cache key) on this rank."""

    def __init__(self, indexed):
        self.sizes, self.count = np.ascontiguousarray(indexed.sizes).tobytes(), 0

    def sha1(self, data=b""):
        self.count += bytes(data) == self.sizes
        return self._real.sha1(data)

    def __enter__(self):
        from megatron_th.data import gpt_dataset as gd

        self._real, gd.hashlib = gd.hashlib, self
        return self

    def __exit__(self, *exc):
        from megatron_th.data import gpt_dataset as gd

        gd.hashlib = self._real


def _train(ctx):
    """Fault 5: training (index cache beside the data) while fcntl.flock raises ENOSYS."""
    from megatron_th.config import parse_config
    from megatron_th.training.pretrain import pretrain

    cfg, _ = parse_config(_argv(ctx["prefix"], "--train-iters", "2", "--save", ctx["ck"]))
    with _HashesData(ctx["indexed"]) as hashes:
        first = pretrain(cfg, log=lambda *a: None)
    return {"trained": first["state"]["iteration"], "hashed_data": hashes.count}


def _resume(ctx):
    """Fault 6: resume; rank 0 resolves and reads the metadata, the others only read tensors."""
    from megatron_th.config import parse_config
    from megatron_th.training.pretrain import pretrain

    cfg, _ = parse_config(_argv(ctx["prefix"], "--train-iters", "3", "--load", ctx["ck"]))
    with _Opens(ctx["ck"]) as opens:
        ctx["run"] = pretrain(cfg, log=lambda *a: None)
    ctx["cfg"] = cfg
    return {"resumed": [ctx["run"]["state"]["iteration"], len(ctx["run"]["losses"])],
            "meta_opens": sum(p.endswith("metadata.json") for _, p in opens.calls),
            "scan_opens": sum(how == "open" and p.endswith(".safetensors") for how, p in opens.calls)}


def _open(ctx):
    """open_checkpoint: one metadata read and one scan (rank 0); rank 1 opens the shard it reads."""
    import torch.distributed as dist

    from megatron_th.training.resume import open_checkpoint, save_weights_only

    wo = os.path.join(ctx["tmp"], "weights")
    if ctx["rank"] == 0:  # one tensor per shard
        save_weights_only(wo, 7, ((f"t{i}", _arange(i)) for i in range(4)), {}, None, shard_bytes=1)
    dist.barrier()
    with _Opens(wo) as opens:
        reader = open_checkpoint(wo)
        t2 = reader.read("t2").tolist()
    # a --load directory rank 1 cannot see (node-local disk): one error on every rank
    real_isfile = os.path.isfile
    if ctx["rank"] == 1:
        os.path.isfile = lambda p: False if os.path.realpath(p).startswith(os.path.realpath(wo)) else real_isfile(p)
    try:
        unseen = _errors(lambda: open_checkpoint(wo))
    finally:
        os.path.isfile = real_isfile
    return {"calls": sorted(opens.calls), "t2": t2, "iteration": reader.meta["state"]["iteration"],
            "path": reader.path, "unseen": unseen}


def _save(ctx):
    """A --save directory rank 1 cannot see (node-local): one ConfigError on every rank."""
    from megatron_th.training.resume import save_state

    run, cfg = ctx["run"], ctx["cfg"]
    cfg.train.save = os.path.join(ctx["tmp"], "save_rank0" if ctx["rank"] == 0 else "save_rank1_node_local")
    err = _errors(lambda: save_state(cfg, run["model"], run["optimizer"], dict(run["state"]), None,
                                     groups=run["groups"]))
    tmp = os.path.join(cfg.train.save, "iter_0000003.tmp")
    return {"error": err, "written": sorted(os.listdir(tmp)) if os.path.isdir(tmp) else None}


def _dataset(ctx, seed, cache_dir):
    """Train split of docs [0, 200), 50 samples of 32 tokens, on every rank over the host group."""
    from megatron_th.data.gpt_dataset import GPTDataset

    return GPTDataset(ctx["indexed"], 0, (0, 200), 32, seed, 50, cache_dir,
                      **({"group": ctx["group"]} if ctx["group"] is not None else {}))


def _node_local(ctx):
    """Index cache on node-local disks: rank 1 plays local rank 0 of a second node and rebuilds."""
    rank = ctx["rank"]
    local = os.path.join(ctx["tmp"], f"node{rank}_cache")  # the "same" path, another disk per node
    os.environ["LOCAL_RANK"] = "0"
    try:
        with _HashesData(ctx["indexed"]) as hashes:
            ds = _dataset(ctx, 3, local)
    finally:
        os.environ["LOCAL_RANK"] = str(rank)
    return {"files": sorted(os.listdir(local)), "sample": ds[17].tolist(), "hashed_data": hashes.count}


def _invisible(ctx):
    """The same, but rank 1 is on rank 0's node (LOCAL_RANK 1): nobody rebuilds; one error."""
    other = os.path.join(ctx["tmp"], f"rank{ctx['rank']}_private_cache")
    err = _errors(lambda: _dataset(ctx, 4, other))
    return {"error": err, "built": os.path.isdir(other) and bool(os.listdir(other))}


def _readonly(ctx):
    """The index cache directory is read-only for rank 0 (the builder): one error on every rank."""
    ro = os.path.join(ctx["tmp"], "readonly_cache")
    real = os.makedirs

    def makedirs(path, *a, **k):
        if os.path.realpath(path).startswith(os.path.realpath(ro)):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real(path, *a, **k)
    if ctx["rank"] == 0:
        os.makedirs = makedirs
    try:
        return {"error": _errors(lambda: _dataset(ctx, 5, ro))}
    finally:
        os.makedirs = real


CHECKS = {"train": _train, "resume": _resume, "open": _open, "save": _save, "node_local": _node_local,
          "invisible": _invisible, "readonly": _readonly}


def _body(rank, world, prefix, tmp, checks=tuple(CHECKS), no_flock=True):
    import fcntl

    from megatron_th.data.indexed import IndexedDataset
    try:
        from megatron_th.parallel.host_sync import host_group
    except ImportError:  # the code before the fix (to show these tests fail on it)
        host_group = lambda: None  # noqa: E731

    def enosys(*a, **k):
        raise OSError(errno.ENOSYS, "Function not implemented")
    if no_flock:
        fcntl.flock = enosys  # as on Lustre mounted without flock
    ctx = {"rank": rank, "prefix": prefix, "tmp": tmp, "ck": os.path.join(tmp, "ck"),
           "indexed": IndexedDataset(prefix)}
    out = {}
    for name in checks:
        if name in ("node_local", "invisible", "readonly") and "group" not in ctx:
            ctx["group"] = host_group()  # made by every rank at the same point
        out[name] = CHECKS[name](ctx)
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    prefix = _make_data(tmp / "data")
    return D.run(_body, 2, prefix, str(tmp), timeout=120)


def test_training_works_when_flock_raises_enosys(cluster):
    assert [r["train"]["trained"] for r in cluster] == [2, 2]


def test_only_the_building_rank_hashes_the_data(cluster):
    assert cluster[0]["train"]["hashed_data"] >= 1 and cluster[1]["train"]["hashed_data"] == 0


def test_resume_is_decided_on_rank0_and_others_read_no_metadata(cluster):
    r0, r1 = cluster[0]["resume"], cluster[1]["resume"]
    assert r0["resumed"] == r1["resumed"] == [3, 1]
    assert 1 <= r0["meta_opens"] <= 2 and r0["scan_opens"] >= 2  # rank 0 scanned both shards
    assert r1["meta_opens"] == 0 and r1["scan_opens"] == 0  # rank 1 opened shards only to read them


def test_open_checkpoint_scans_once_and_others_open_only_what_they_read(cluster):
    r0, r1 = cluster[0]["open"], cluster[1]["open"]
    assert r0["t2"] == r1["t2"] == [2.0 + x for x in range(12)]
    assert r0["iteration"] == r1["iteration"] == 7 and r0["path"] == r1["path"]
    d = "iter_0000007/"
    assert r0["calls"] == sorted([("open", "latest"), ("open", d + "metadata.json"), ("safe", d + "shard_00002.safetensors")]
                                 + [("open", f"{d}shard_{i:05d}.safetensors") for i in range(4)])
    assert r1["calls"] == [("safe", d + "shard_00002.safetensors")]


def test_load_from_a_filesystem_rank1_cannot_see_fails_on_every_rank(cluster):
    for r in cluster:
        assert r["open"]["unseen"] is not None, "the load should have failed"
        kind, msg = r["open"]["unseen"]
        assert kind == "FileNotFoundError" and "--load must be on a filesystem every rank shares" in msg


def test_save_on_a_filesystem_rank1_cannot_see_fails_on_every_rank(cluster):
    for r in cluster:
        assert r["save"]["error"] is not None, "the save should have failed"
        kind, msg = r["save"]["error"]
        assert kind == "ConfigError", r["save"]["error"]
        assert "--save must be on a filesystem every rank shares" in msg and "rank(s) [1]" in msg
    assert cluster[0]["save"]["written"] == [".prepared"]  # failed before any shard was written


def test_node_local_index_cache_is_built_by_each_nodes_local_rank0(cluster):
    a, b = cluster[0]["node_local"], cluster[1]["node_local"]
    assert len(a["files"]) == 3 and a["files"] == b["files"]  # rank 1 rebuilt the same files on its node
    assert a["sample"] == b["sample"]
    # ... under the key rank 0 broadcast: only rank 0 hashed the data
    assert a["hashed_data"] == 1 and b["hashed_data"] == 0


def test_index_cache_some_rank_cannot_see_is_one_error(cluster):
    for r in cluster:
        assert r["invisible"]["error"] is not None, "should fail: rank 1 cannot see the cache, nor build it"
        kind, msg = r["invisible"]["error"]
        assert kind == "FileNotFoundError" and "--data-cache-path" in msg and "[1]" in msg
    assert not cluster[1]["invisible"]["built"]


def test_unwritable_index_cache_on_rank0_fails_on_every_rank(cluster):
    for r in cluster:
        assert r["readonly"]["error"] is not None, "should fail on every rank"
        kind, msg = r["readonly"]["error"]
        assert kind == "ConfigError" and "--data-cache-path" in msg and "Read-only" in msg


def test_read_only_data_dir_is_one_error_naming_data_cache_path(tmp_path, monkeypatch, capsys):
    """Single process, as the CLI runs it: no --data-cache-path and a read-only data mount."""
    from megatron_th.training import pretrain as pt

    prefix = _make_data(tmp_path / "ro_data")
    ro = os.path.realpath(tmp_path / "ro_data")
    real_makedirs, real_open = os.makedirs, builtins.open

    def blocked(path):
        return isinstance(path, (str, os.PathLike)) and os.path.realpath(path).startswith(ro + os.sep)

    def makedirs(path, *a, **k):
        if blocked(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_makedirs(path, *a, **k)

    def open_(file, mode="r", *a, **k):
        if blocked(file) and any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(os, "makedirs", makedirs)
    monkeypatch.setattr(builtins, "open", open_)
    rc = pt.main(_argv(prefix, "--train-iters", "1"))
    err = capsys.readouterr().err
    assert rc != 0
    assert err.startswith("error: --data-cache-path") and err.count("\n") == 1, err
    assert "Read-only file system" in err and ro in err
