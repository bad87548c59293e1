"""Topology-free checkpoints: logical tensors in safetensors slices + JSON metadata, no pickle.

Layout::

    DIR/latest                         "iter_0000100" (written last, atomically)
    DIR/iter_0000100/metadata.json     format, iteration, config, state, and for every logical
                                       tensor: shape, dtype and the slices that cover it
    DIR/iter_0000100/shard_00000.safetensors   the slices rank 0 owns (one file per rank)
    DIR/iter_0000100/tokenizer.model   the tokenizer, so tools need only --load

A checkpoint is written into ``iter_N.tmp``, fsynced, renamed to ``iter_N`` and only then pointed
to by ``latest``: a kill at any moment leaves the previous checkpoint loadable. Readers assemble
any region of a logical tensor from the slices that intersect it, so any layout can load any other.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "megatron_th-checkpoint/1"
_ITER = re.compile(r"^iter_(\d{7,})$")
_PICKLE_EXT = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".distcp")


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

    def prepare(self) -> None:
        """One rank, before any shard is written."""
        os.makedirs(self.save_dir, exist_ok=True)
        if os.path.exists(self.tmp):
            shutil.rmtree(self.tmp)
        os.makedirs(self.tmp)

    def write_shard(self, rank: int, pieces: list) -> list:
        payload, index = shard_entries(rank, pieces)
        path = os.path.join(self.tmp, f"shard_{rank:05d}.safetensors")
        save_file(payload, path)
        _fsync_file(path)
        return index

    def commit(self, indices: list[dict], meta: dict, files: dict | None = None, keep_last: int | None = None) -> str:
        meta = dict(meta, format=FORMAT, iteration=self.iteration, tensors=merge_indices(indices))
        for name, src in (files or {}).items():
            _write_extra(os.path.join(self.tmp, name), src)
        _write_atomic(os.path.join(self.tmp, "metadata.json"), json.dumps(meta, indent=1).encode())
        _fsync_dir(self.tmp)
        if os.path.exists(self.final):  # re-saving the same iteration replaces it
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        _fsync_dir(self.save_dir)
        _write_atomic(os.path.join(self.save_dir, "latest"), iter_dirname(self.iteration).encode())
        _fsync_dir(self.save_dir)
        if keep_last:
            prune(self.save_dir, keep_last)
        return self.final


def list_iterations(save_dir: str) -> list[int]:
    if not os.path.isdir(save_dir):
        return []
    return sorted(int(m.group(1)) for d in os.listdir(save_dir) if (m := _ITER.match(d))
                  and os.path.isfile(os.path.join(save_dir, d, "metadata.json")))


def prune(save_dir: str, keep_last: int) -> None:
    for it in list_iterations(save_dir)[:-keep_last]:
        shutil.rmtree(os.path.join(save_dir, iter_dirname(it)), ignore_errors=True)


def find_checkpoint(load_dir: str, iteration: int | None = None) -> str | None:
    """The directory to load: ``iteration`` if given, else ``latest``, else the newest complete one."""
    if iteration is not None:
        path = os.path.join(load_dir, iter_dirname(iteration))
        return path if os.path.isfile(os.path.join(path, "metadata.json")) else None
    latest = os.path.join(load_dir, "latest")
    if os.path.isfile(latest):
        name = open(latest).read().strip()
        if _ITER.match(name) and os.path.isfile(os.path.join(load_dir, name, "metadata.json")):
            return os.path.join(load_dir, name)
    its = list_iterations(load_dir)
    return os.path.join(load_dir, iter_dirname(its[-1])) if its else None


class CheckpointReader:
    """Reads any region of any logical tensor; refuses pickles and paths leaving the directory."""

    def __init__(self, path: str):
        self.path = os.path.realpath(path)
        meta_path = os.path.join(self.path, "metadata.json")
        for f in os.listdir(self.path):
            full = os.path.join(self.path, f)
            if f.endswith(_PICKLE_EXT) or (os.path.isfile(full) and _looks_pickled(full)):
                raise CheckpointError(f"{full}: refusing to load a pickle/torch.save file from a checkpoint")
        try:
            with open(meta_path, encoding="utf-8") as fh:
                self.meta = json.load(fh)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({e})") from None
        if self.meta.get("format") != FORMAT:
            raise CheckpointError(f"{meta_path}: unknown checkpoint format {self.meta.get('format')!r}")
        self.tensors = self.meta["tensors"]
        for name, e in self.tensors.items():
            for s in e["slices"]:
                self._file(s["file"], name)
        self._handles = {}

    def _file(self, fname: str, name: str) -> str:
        full = os.path.realpath(os.path.join(self.path, fname))
        if os.path.dirname(full) != self.path or not fname.endswith(".safetensors"):
            raise CheckpointError(f"{self.path}/metadata.json: tensor {name} points outside the checkpoint ({fname!r})")
        return full

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
