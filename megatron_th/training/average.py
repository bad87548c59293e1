"""Checkpoint averaging (tools/average_checkpoints.py): the weighted mean of the model weights of
several saved iterations, written as a weights-only checkpoint.

Checkpoints are stored by logical tensor whatever the layout they were saved from (TP/PP/DP), so
averaging is a loop over tensor names: for each model tensor, read it from every input (its fp32
master ``optim.master.<name>`` when the checkpoint has one, else the weight), accumulate
``sum_i w_i x_i`` in fp64 with the weights normalised to sum 1, round it to fp32, and hand it to
resume.py ``save_weights_only``, which writes it out before the next tensor is read. Memory stays
near one tensor (fp64 accumulator + one input read). Output: the weight in the first input's dtype
(the fp32 mean rounded, as training rounds its masters) and, when that dtype is 16-bit, the fp32
mean as ``optim.master.<name>`` too, so training, export and loading at any layout start from the
precise mean. Averaging a checkpoint with itself gives it back bitwise. (Averaging one run's late
checkpoints: e.g. Sanyal et al. 2023, "Early Weight Averaging meets High Learning Rates for LLM
Pre-training"; Li et al. 2025, "Model Merging in Pre-training of Large Language Models".)
"""
from __future__ import annotations

import math
import os

import torch

from megatron_th.config import ARCH_FIELDS
from megatron_th.training.checkpoint import iter_dirname
from megatron_th.training.resume import open_checkpoint, save_weights_only, tokenizer_spec

_SIXTEEN = ("bfloat16", "float16")


class AverageError(ValueError):
    """Bad flags or checkpoints that cannot be averaged (printed as one ``error:`` line)."""


def normalised_weights(iterations: list[int], weights: list[float] | None) -> list[float]:
    """``weights`` (default all 1) divided by their sum. AverageError naming the flag when there are
    no iterations, a count mismatch, a negative or non-finite weight, or a zero sum. An iteration
    may repeat (its weights add up)."""
    if not iterations:
        raise AverageError("--iterations: give at least one iteration")
    weights = [1.0] * len(iterations) if weights is None else [float(w) for w in weights]
    if len(weights) != len(iterations):
        raise AverageError(f"--weights has {len(weights)} values for {len(iterations)} --iterations")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise AverageError(f"--weights {','.join(map(str, weights))}: need finite values >= 0 with a positive sum")
    total = sum(weights)
    return [w / total for w in weights]


def model_tensor_names(reader) -> list[str]:
    return [n for n in reader.tensors if not n.startswith(("optim.", "rng."))]


def _check_same_model(readers) -> list[str]:
    first, names = readers[0], model_tensor_names(readers[0])
    arch = {k: first.meta.get("config", {}).get("model", {}).get(k) for k in ARCH_FIELDS}
    for r in readers[1:]:
        other = model_tensor_names(r)
        if sorted(other) != sorted(names):
            extra, missing = sorted(set(other) - set(names)), sorted(set(names) - set(other))
            raise AverageError(f"{r.path}: its model tensors differ from {first.path}'s (extra {extra[:3]}, "
                               f"missing {missing[:3]})")
        for n in names:
            if r.shape(n) != first.shape(n):
                raise AverageError(f"{r.path}: {n} has shape {r.shape(n)}, {first.path} {first.shape(n)}")
        changed = [k for k in ARCH_FIELDS if r.meta.get("config", {}).get("model", {}).get(k) != arch[k]]
        if changed:
            raise AverageError(f"{r.path}: model options {changed[:4]} differ from {first.path}'s")
    return names


def averaged_tensors(readers, weights: list[float], names: list[str]):
    """Yields (name, tensor) of the averaged checkpoint, one tensor at a time."""
    for name in names:
        acc = None
        for r, w in zip(readers, weights):
            src = "optim.master." + name if "optim.master." + name in r.tensors else name
            x = r.read(src).to(torch.float64)
            acc = x.mul_(w) if acc is None else acc.add_(x, alpha=w)
        dtype = readers[0].tensors[name]["dtype"]
        mean = acc.to(torch.float32)
        del acc
        yield name, mean.to(getattr(torch, dtype))  # a 16-bit weight is its rounded master, as in training
        if dtype in _SIXTEEN:
            yield "optim.master." + name, mean


def average_checkpoints(load: str, iterations: list[int], output: str, weights: list[float] | None = None,
                        shard_bytes: int = 0, log=print) -> str:
    """Writes the weighted mean of ``load``'s checkpoints of ``iterations`` to ``output`` (a
    checkpoint directory: ``iter_<last>`` + ``latest``); returns the checkpoint written.
    ``shard_bytes``: group tensors into shards of about this size (0: one tensor per shard file,
    memory near one tensor). Raises AverageError for bad arguments, FileNotFoundError for a missing
    iteration, CheckpointError for an unsafe checkpoint."""
    w = normalised_weights(list(iterations), weights)
    readers = [open_checkpoint(load, it, group=None) for it in iterations]
    names = _check_same_model(readers)
    last = readers[int(max(range(len(iterations)), key=lambda i: iterations[i]))]
    iteration = max(iterations)
    if os.path.isfile(os.path.join(output, iter_dirname(iteration), "metadata.json")):
        raise AverageError(f"--output {output}: already holds a checkpoint of iteration {iteration} (choose another "
                           f"directory; averaging never overwrites a checkpoint)")
    state = {"iteration": iteration, "consumed_samples": 0, "skipped_iters": 0}
    if "hf_base" in (last.meta.get("state") or {}):  # an imported model exports as it came (convert/to_hf.py)
        state["hf_base"] = last.meta["state"]["hf_base"]
    log(f"averaging {len(names)} tensors of {load} iterations {', '.join(map(str, iterations))} with weights "
        f"{', '.join(f'{x:.4g}' for x in w)}")
    path = save_weights_only(output, iteration, averaged_tensors(readers, w, names), last.meta["config"],
                             tokenizer_spec(last), shard_bytes=shard_bytes,
                             extra_meta={"state": state, "averaged": {"load": os.path.abspath(load),
                                                                      "iterations": list(iterations),
                                                                      "weights": w}})
    log(f"wrote {path}")
    return path
