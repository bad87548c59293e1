"""Hugging Face weight files: a streaming sharded safetensors writer and a lazy reader.

Writer: tensors are added one at a time; a shard is written as soon as it reaches
``max_shard_bytes``, so memory holds at most one shard (plus the tensor being added). Names follow
`transformers`: ``model.safetensors`` when there is one shard, else
``model-0000i-of-0000N.safetensors`` plus ``model.safetensors.index.json``.

Reader: ``model.safetensors``, a sharded index, or (read with ``weights_only=True``, never
unpickling code) ``pytorch_model.bin`` / its index. Tensors are loaded one at a time.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from megatron_th.utils.safetensors_file import save_safetensors

from megatron_th.convert.hf_arch import ConversionError

DEFAULT_SHARD_BYTES = 5 * 2 ** 30


def parse_size(text: str) -> int:
    """'5GB', '500MB', '10KB' or bytes -> bytes (powers of 1024, as ``--max-shard-size``)."""
    units = {"KB": 2 ** 10, "MB": 2 ** 20, "GB": 2 ** 30, "TB": 2 ** 40, "B": 1}
    s = str(text).strip().upper()
    for u, mult in units.items():
        if s.endswith(u) and s[: -len(u)].strip().replace(".", "", 1).isdigit():
            return int(float(s[: -len(u)]) * mult)
    if s.isdigit():
        return int(s)
    raise ValueError(f"--max-shard-size {text!r}: use a size like 5GB, 500MB or a byte count")


class ShardedWriter:
    def __init__(self, out_dir: str, max_shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.out_dir, self.max_bytes = out_dir, max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[tuple[str, list[str]]] = []  # (temporary file, names)
        self.total = 0
        self.peak_pending = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        if self.pending and self.pending_bytes + nbytes > self.max_bytes:
            self._flush()
        self.pending[name] = t.detach().contiguous()
        self.pending_bytes += nbytes
        self.total += nbytes
        self.peak_pending = max(self.peak_pending, self.pending_bytes)

    def _flush(self) -> None:
        if not self.pending:
            return
        tmp = os.path.join(self.out_dir, f".shard{len(self.files):05d}.tmp")
        save_safetensors(self.pending, tmp, metadata={"format": "pt"})
        self.files.append((tmp, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> list[str]:
        """Names the shards and writes the index; returns the file names."""
        self._flush()
        n = len(self.files)
        if n == 1:
            os.replace(self.files[0][0], os.path.join(self.out_dir, "model.safetensors"))
            return ["model.safetensors"]
        weight_map, names = {}, []
        for i, (tmp, tensors) in enumerate(self.files):
            fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(tmp, os.path.join(self.out_dir, fname))
            weight_map.update({t: fname for t in tensors})
            names.append(fname)
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(self.out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
        return names + ["model.safetensors.index.json"]


class HFWeights:
    """name -> tensor, read lazily from an HF model directory."""

    def __init__(self, hf_dir: str):
        self.dir = hf_dir
        self.where: dict[str, str] = {}
        self._open: dict[str, object] = {}
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            path = os.path.join(hf_dir, index_name)
            if os.path.isfile(path):
                with open(path) as f:
                    self.where = dict(json.load(f)["weight_map"])
                break
        else:
            for single in ("model.safetensors", "pytorch_model.bin"):
                if os.path.isfile(os.path.join(hf_dir, single)):
                    self.where = {n: single for n in self._names(single)}
                    break
        if not self.where:
            raise ConversionError(f"{hf_dir}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json)")

    def _names(self, fname: str) -> list[str]:
        return list(self._file(fname).keys())

    def _file(self, fname: str):
        if fname not in self._open:
            path = os.path.join(self.dir, fname)
            if not os.path.isfile(path):
                raise ConversionError(f"{path}: listed in the index but missing")
            if fname.endswith(".safetensors"):
                self._open[fname] = safe_open(path, framework="pt")
            else:  # weights_only: tensors and plain containers only, never arbitrary code
                try:
                    self._open[fname] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except Exception as e:  # noqa: BLE001 -- any refusal becomes one line
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise ConversionError(f"{path}: refused by torch.load(weights_only=True) ({first}); "
                                          "only tensors are read from .bin files, never code") from None
        return self._open[fname]

    def names(self) -> list[str]:
        return list(self.where)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def _holder(self, name: str):
        if name not in self.where:
            raise ConversionError(f"{self.dir}: the weights have no tensor {name!r}")
        return self._file(self.where[name])

    def shape(self, name: str) -> list[int]:
        """A tensor's shape without reading its data."""
        f = self._holder(name)
        return list(f.get_slice(name).get_shape()) if hasattr(f, "get_slice") else list(f[name].shape)

    def get(self, name: str) -> torch.Tensor:
        f = self._holder(name)
        return f.get_tensor(name) if hasattr(f, "get_tensor") else f[name]
