"""Topology-free checkpoints: logical tensors in safetensors slices + JSON metadata, no pickle.

Layout::

    DIR/latest                         "iter_0000100" (written last, atomically)
    DIR/iter_0000100/metadata.json     commit_time_ns (first), format, iteration, config, state,
                                       and for every logical tensor: shape, dtype, slices
    DIR/iter_0000100/shard_00000.safetensors   the slices rank 0 owns (one file per rank)
    DIR/iter_0000100/tokenizer.model   the tokenizer, so tools need only --load

A checkpoint is written into ``iter_N.tmp``, fsynced, renamed to ``iter_N`` and only then pointed
to by ``latest``: a kill at any moment leaves the previous checkpoint loadable. ``--keep-last``
keeps the most recently committed checkpoints (not the highest iterations), never the one just
written nor the one ``latest`` names. Readers assemble any region of a logical tensor from the
slices that intersect it, so any layout can load any other.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import time

import torch
from safetensors import safe_open
from megatron_th.utils.safetensors_file import save_safetensors

from megatron_th.config import ConfigError
from megatron_th.parallel import host_sync

FORMAT = "megatron_th-checkpoint/1"
_ITER = re.compile(r"^iter_(\d{7,})$")
_PICKLE_EXT = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".distcp")
_TOKEN = ".prepared"  # in iter_N.tmp only: lets every rank check it sees the directory rank 0 made


class CheckpointError(RuntimeError):
    pass


def iter_dirname(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_extra(dst: str, src) -> None:
    """A file stored beside the tensors: bytes, {file: bytes} (a directory), or a path to copy."""
    if isinstance(src, dict):
        os.makedirs(dst, exist_ok=True)
        for f, data in src.items():
            _write_extra(os.path.join(dst, f), data)
        return
    if isinstance(src, bytes):
        with open(dst, "wb") as f:
            f.write(src)
    else:
        shutil.copyfile(src, dst)
    _fsync_file(dst)


def shard_entries(rank: int, pieces: list) -> tuple[dict, list]:
    """pieces: [(name, local tensor, full shape, offset)]. Returns (safetensors dict, slice index)."""
    fname = f"shard_{rank:05d}.safetensors"
    payload, index = {}, []
    for name, t, full_shape, offset in pieces:
        key = f"{name}@{','.join(map(str, offset))}"
        payload[key] = t.detach().to("cpu").contiguous()
        index.append((name, {"shape": list(full_shape), "dtype": str(t.dtype).replace("torch.", ""),
                             "slice": {"file": fname, "key": key, "offset": list(offset), "shape": list(t.shape)}}))
    return payload, index


def merge_indices(indices: list[list]) -> dict:
    """Per-rank slice indices -> {name: {shape, dtype, slices: [...]}}; duplicates dropped."""
    out = {}
    for idx in indices:
        for name, e in idx:
            entry = out.setdefault(name, {"shape": e["shape"], "dtype": e["dtype"], "slices": []})
            if entry["shape"] != e["shape"]:
                raise CheckpointError(f"{name}: ranks disagree on its shape {entry['shape']} vs {e['shape']}")
            if all(s["offset"] != e["slice"]["offset"] or s["shape"] != e["slice"]["shape"] for s in entry["slices"]):
                entry["slices"].append(e["slice"])
    return out


class CheckpointWriter:
    """Two phases so that ranks can write in parallel: ``write_shard`` on every rank, then
    ``commit`` on one rank after a barrier."""

    def __init__(self, save_dir: str, iteration: int):
        self.save_dir, self.iteration = save_dir, iteration
        self.final = os.path.join(save_dir, iter_dirname(iteration))
        self.tmp = self.final + ".tmp"

    def prepare(self) -> str:
        """One rank, before any shard is written: a fresh ``iter_N.tmp`` holding a random token
        file; returns the token. Raises ConfigError naming --save if the directory cannot be made."""
        token = secrets.token_hex(8)
        try:
            os.makedirs(self.save_dir, exist_ok=True)
            if os.path.exists(self.tmp):
                shutil.rmtree(self.tmp)
            os.makedirs(self.tmp)
            with open(os.path.join(self.tmp, _TOKEN), "w") as f:
                f.write(token)
        except OSError as e:
            raise ConfigError(f"--save {self.save_dir}: cannot create {self.tmp} ({e.strerror or e})") from None
        return token

    def sees(self, token: str) -> bool:
        """Whether this process sees the ``iter_N.tmp`` that ``prepare`` (maybe on another node) made."""
        try:
            with open(os.path.join(self.tmp, _TOKEN)) as f:
                return f.read() == token
        except OSError:
            return False

    def prepare_shared(self, group=None) -> None:
        """Every rank, before any shard is written: rank 0 prepares; every rank checks that it sees
        the new ``iter_N.tmp`` (by its token); the answers are all-gathered, so a save directory
        some rank cannot see (node-local ``--save``) fails on every rank with one ConfigError
        instead of a hang or a missing shard. ``group``: host_sync.host_group() (None: one process)."""
        token = host_sync.run_on_rank0(self.prepare, group, shared=(ConfigError,))
        bad = host_sync.ranks_failing(self.sees(token), group)
        if bad:
            raise ConfigError(f"--save {self.save_dir}: rank(s) {bad} cannot see {self.tmp}, which rank 0 "
                              f"just created; --save must be on a filesystem every rank shares")

    def write_shard(self, rank: int, pieces: list) -> list:
        payload, index = shard_entries(rank, pieces)
        path = os.path.join(self.tmp, f"shard_{rank:05d}.safetensors")
        save_safetensors(payload, path)
        _fsync_file(path)
        return index

    def commit(self, indices: list[dict], meta: dict, files: dict | None = None, keep_last: int | None = None) -> str:
        """One rank, after every shard is written: metadata (with the commit time first, which
        retention orders by), rename to ``iter_N``, ``latest`` -> it, then ``prune`` to
        ``keep_last``, which never removes this checkpoint. Returns the checkpoint directory."""
        meta = {"commit_time_ns": time.time_ns(),
                **dict(meta, format=FORMAT, iteration=self.iteration, tensors=merge_indices(indices))}
        for name, src in (files or {}).items():
            _write_extra(os.path.join(self.tmp, name), src)
        if os.path.exists(os.path.join(self.tmp, _TOKEN)):
            os.remove(os.path.join(self.tmp, _TOKEN))
        _write_atomic(os.path.join(self.tmp, "metadata.json"), json.dumps(meta, indent=1).encode())
        _fsync_dir(self.tmp)
        if os.path.exists(self.final):  # re-saving the same iteration replaces it
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        _fsync_dir(self.save_dir)
        _write_atomic(os.path.join(self.save_dir, "latest"), iter_dirname(self.iteration).encode())
        _fsync_dir(self.save_dir)
        if keep_last:
            prune(self.save_dir, keep_last, keep=(iter_dirname(self.iteration),))
        return self.final


def list_iterations(save_dir: str) -> list[int]:
    """Iterations of the complete checkpoints (``iter_N/metadata.json``) in ``save_dir``, ascending."""
    if not os.path.isdir(save_dir):
        return []
    return sorted(int(m.group(1)) for d in os.listdir(save_dir) if (m := _ITER.match(d))
                  and os.path.isfile(os.path.join(save_dir, d, "metadata.json")))


_COMMIT = re.compile(rb'"commit_time_ns":\s*(\d+)')


def commit_time_ns(path: str) -> int:
    """When checkpoint directory ``path`` was committed (ns since the epoch): ``commit_time_ns``,
    the first key of its metadata.json (only the file's head is read), else, for checkpoints
    written before it existed, the mtime of metadata.json (written once, at commit)."""
    meta = os.path.join(path, "metadata.json")
    with open(meta, "rb") as f:
        m = _COMMIT.search(f.read(256))
    return int(m.group(1)) if m else os.stat(meta).st_mtime_ns


def committed_order(save_dir: str) -> list[int]:
    """Iterations of the complete checkpoints in ``save_dir``, oldest commit first (ties: by
    iteration). Two runs saving into one directory interleave by when they saved, not by their
    iteration numbers."""
    out = []
    for it in list_iterations(save_dir):
        try:
            out.append((commit_time_ns(os.path.join(save_dir, iter_dirname(it))), it))
        except OSError:  # removed meanwhile
            continue
    return [it for _, it in sorted(out)]


def _latest_name(save_dir: str) -> str | None:
    try:
        with open(os.path.join(save_dir, "latest")) as f:
            return f.read().strip()
    except OSError:
        return None


def prune(save_dir: str, keep_last: int, keep: tuple = ()) -> None:
    """Removes all but the ``keep_last`` most recently committed checkpoints, never one named in
    ``keep`` (directory names; commit passes the one it just wrote) nor the one ``latest``
    names."""
    protected = set(keep) | {_latest_name(save_dir)}
    for it in committed_order(save_dir)[:-keep_last]:
        if iter_dirname(it) not in protected:
            shutil.rmtree(os.path.join(save_dir, iter_dirname(it)), ignore_errors=True)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def find_checkpoint(load_dir: str, iteration: int | None = None, warn=_warn) -> str | None:
    """The directory to load: ``iteration`` if given, else the one ``latest`` names, else the most
    recently committed complete one (``committed_order``; in one run's directory, the newest
    iteration). A ``latest`` naming a missing or incomplete directory (a kill while an iteration
    was being re-saved, or a directory edited by hand) falls back the same way, after one
    ``warn`` line (default: ``warning: ...`` on stderr) naming both. None if there is none."""
    if iteration is not None:
        path = os.path.join(load_dir, iter_dirname(iteration))
        return path if os.path.isfile(os.path.join(path, "metadata.json")) else None
    name = _latest_name(load_dir)
    if name is not None and _ITER.match(name) and os.path.isfile(os.path.join(load_dir, name, "metadata.json")):
        return os.path.join(load_dir, name)
    its = committed_order(load_dir)
    if name is not None:
        instead = (f"loading the most recently committed one instead, {iter_dirname(its[-1])}" if its
                   else "and there is no other complete checkpoint")
        warn(f"{os.path.join(load_dir, 'latest')} names {name!r}, which is not a complete checkpoint; {instead}")
    return os.path.join(load_dir, iter_dirname(its[-1])) if its else None


def scan_checkpoint(path: str) -> dict:
    """Safety scan and metadata of checkpoint directory ``path``: refuses pickle / torch.save files
    and slices pointing outside the directory, reads ``metadata.json``. Opens every file once; in a
    distributed run only rank 0 calls it (see ``open_shared``). Raises CheckpointError."""
    path = os.path.realpath(path)
    meta_path = os.path.join(path, "metadata.json")
    for f in os.listdir(path):
        full = os.path.join(path, f)
        if f == "metadata.json":  # parsed as JSON below: a pickle there fails to parse
            continue
        if f.endswith(_PICKLE_EXT) or (os.path.isfile(full) and _looks_pickled(full)):
            raise CheckpointError(f"{full}: refusing to load a pickle/torch.save file from a checkpoint")
    try:
        with open(meta_path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8 (a pickle)
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({e})") from None
    _check_meta(path, meta)
    first = {}
    for name, e in meta["tensors"].items():
        for s in e["slices"]:
            first.setdefault(s["file"], name)
    for fname, name in first.items():  # each file once: a path check per slice is slow on Lustre
        full = os.path.realpath(os.path.join(path, fname))
        if os.path.dirname(full) != path:
            raise CheckpointError(f"{path}/metadata.json: tensor {name} points outside the checkpoint ({fname!r})")
    return meta


def _check_meta(path: str, meta: dict) -> None:
    """Checks that need no file access: format, and slice files named as plain .safetensors files."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path}/metadata.json: unknown checkpoint format {fmt!r}")
    for name, e in meta["tensors"].items():
        for s in e["slices"]:
            f = s["file"]
            if not f.endswith(".safetensors") or os.path.basename(f) != f:
                raise CheckpointError(f"{path}/metadata.json: tensor {name} points outside the checkpoint ({f!r})")


class CheckpointReader:
    """Reads any region of any logical tensor; refuses pickles and paths leaving the directory.

    ``CheckpointReader(path)`` scans the directory itself (``scan_checkpoint``). Given ``meta``
    (rank 0's scan, broadcast by ``open_shared``) it opens nothing until ``read``, and then only
    the shard files holding the requested regions."""

    def __init__(self, path: str, meta: dict | None = None):
        if meta is None:
            self.path, self.meta = os.path.realpath(path), scan_checkpoint(path)
        else:
            self.path, self.meta = path, meta
            _check_meta(path, meta)
        self.tensors = self.meta["tensors"]
        self._handles = {}

    def _handle(self, fname: str):
        if fname not in self._handles:
            self._handles[fname] = safe_open(os.path.join(self.path, fname), framework="pt")
        return self._handles[fname]

    def shape(self, name: str) -> list[int]:
        return self.tensors[name]["shape"]

    def read(self, name: str, offset=None, shape=None) -> torch.Tensor:
        """The region ``[offset, offset + shape)`` of logical tensor ``name`` (default: all of it)."""
        if name not in self.tensors:
            raise CheckpointError(f"{self.path}: no tensor {name!r} in the checkpoint")
        e = self.tensors[name]
        full = e["shape"]
        offset = list(offset) if offset is not None else [0] * len(full)
        shape = list(shape) if shape is not None else list(full)
        out = torch.empty(shape, dtype=getattr(torch, e["dtype"]))
        covered = 0
        for s in e["slices"]:
            lo = [max(a, b) for a, b in zip(offset, s["offset"])]
            hi = [min(a + n, b + m) for a, n, b, m in zip(offset, shape, s["offset"], s["shape"])]
            if any(l >= h for l, h in zip(lo, hi)) and len(full) > 0:
                continue
            src = self._handle(s["file"]).get_slice(s["key"])
            idx = tuple(slice(l - b, h - b) for l, h, b in zip(lo, hi, s["offset"]))
            dst = tuple(slice(l - a, h - a) for l, h, a in zip(lo, hi, offset))
            out[dst] = src[idx] if idx else src[:]
            vol = 1
            for l, h in zip(lo, hi):
                vol *= h - l
            covered += vol
        need = out.numel()
        if covered < need:
            raise CheckpointError(f"{self.path}: tensor {name} region {offset}+{shape} is not fully covered by its slices")
        return out


def open_shared(load_dir: str, iteration: int | None = None, group=None, missing_ok: bool = False):
    """Every rank of ``group`` (host_sync.host_group(); None: this process alone): rank 0 resolves
    the checkpoint (``find_checkpoint``), scans it and reads its metadata, and broadcasts path and
    metadata; the other ranks open no file here. Every rank then checks it sees ``metadata.json``
    (a stat); if one cannot, every rank raises FileNotFoundError ("--load must be on a filesystem
    every rank shares"). Returns a CheckpointReader, or None when there is no checkpoint and
    ``missing_ok``; else raises FileNotFoundError naming --load. CheckpointError on every rank for
    an unsafe or malformed checkpoint."""
    def resolve():
        path = find_checkpoint(load_dir, iteration)
        if path is None:
            if missing_ok:
                return None
            what = f"checkpoint of iteration {iteration}" if iteration is not None else "complete checkpoint"
            raise FileNotFoundError(f"--load {load_dir}: no {what} there (looked for latest and iter_*/metadata.json)")
        path = os.path.realpath(path)
        return {"path": path, "meta": scan_checkpoint(path)}

    found = host_sync.run_on_rank0(resolve, group, shared=(FileNotFoundError, CheckpointError))
    if found is None:
        return None
    if group is not None:
        bad = host_sync.ranks_failing(os.path.isfile(os.path.join(found["path"], "metadata.json")), group)
        if bad:
            raise FileNotFoundError(f"--load {load_dir}: rank(s) {bad} cannot see {found['path']}, which rank 0 "
                                    f"loads; --load must be on a filesystem every rank shares")
    return CheckpointReader(found["path"], found["meta"])


def _looks_pickled(path: str) -> bool:
    """A pickle (protocol 2+ starts with 0x80) or a torch.save zip. A safetensors file is checked
    by its own header instead (its first 8 bytes are a length that may start with 0x80)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if path.endswith(".safetensors"):
            if len(head) < 8:
                return True
            n = int.from_bytes(head, "little")
            try:
                json.loads(f.read(min(n, 100_000_000)))
                return False
            except ValueError:
                return True
    return head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"
