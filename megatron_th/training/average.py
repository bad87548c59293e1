"""Checkpoint averaging (tools/average_checkpoints.py): the weighted mean of the model weights of
several saved iterations, written as a weights-only checkpoint.

Checkpoints are stored by logical tensor whatever the layout they were saved from (TP/PP/DP), so
averaging is a loop over tensor names: for each model tensor, read it from every input (its fp32
master ``optim.master.<name>`` when the checkpoint has one, else the weight), accumulate
``sum_i w_i x_i`` in fp64 with the weights normalised to sum 1, round it to fp32, and hand it to
resume.py ``save_weights_only``, which writes it out before the next tensor is read. Memory stays
near one tensor (fp64 accumulator + one input read). The inputs must share the model (tensor
names and shapes, ``ARCH_FIELDS``) and the precision (``--bf16``/``--fp16``, each tensor's dtype).
Output: the weight in the inputs' dtype (the fp32 mean rounded, as training rounds its masters)
and, when that dtype is 16-bit, the fp32 mean as ``optim.master.<name>`` too, so training, export
and loading at any layout start from the precise mean. The output is weights only (no
``optimizer`` metadata, no data position): training continues from it with ``--finetune``.
"Averaging" a single iteration gives it back bitwise. (Averaging one run's late
checkpoints: e.g. Sanyal et al. 2023, "Early Weight Averaging meets High Learning Rates for LLM
Pre-training"; Li et al. 2025, "Model Merging in Pre-training of Large Language Models".)
"""
from __future__ import annotations

import math
import os
import re

import torch

from megatron_th.config import ARCH_FIELDS
from megatron_th.training.resume import open_checkpoint, save_weights_only, tokenizer_spec

_SIXTEEN = ("bfloat16", "float16")


class AverageError(ValueError):
    """Bad flags or checkpoints that cannot be averaged (printed as one ``error:`` line)."""


def normalised_weights(iterations: list[int], weights: list[float] | None) -> list[float]:
    """``weights`` (default all 1) divided by their sum. AverageError naming the flag when there are
    no iterations, an iteration given twice (weigh it with --weights instead), a count mismatch, a
    negative or non-finite weight, or a zero sum."""
    if not iterations:
        raise AverageError("--iterations: give at least one iteration")
    twice = sorted({i for i in iterations if iterations.count(i) > 1})
    if twice:
        raise AverageError(f"--iterations {','.join(map(str, iterations))}: iteration(s) {', '.join(map(str, twice))} "
                           f"given more than once; give each once and weigh them with --weights")
    weights = [1.0] * len(iterations) if weights is None else [float(w) for w in weights]
    if len(weights) != len(iterations):
        raise AverageError(f"--weights has {len(weights)} values for {len(iterations)} --iterations")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise AverageError(f"--weights {','.join(map(str, weights))}: need finite values >= 0 with a positive sum")
    total = sum(weights)
    return [w / total for w in weights]


def model_tensor_names(reader) -> list[str]:
    return [n for n in reader.tensors if not n.startswith(("optim.", "rng."))]


# the config keys that fix what a weight's bits mean: (section, key); the model's are ARCH_FIELDS
PRECISION_KEYS = (("optim", "bf16"), ("optim", "fp16"))


def _config_keys(reader) -> dict:
    cfg = reader.meta.get("config", {})
    keys = {f"{sec}.{k}": cfg.get(sec, {}).get(k) for sec, k in PRECISION_KEYS}
    keys.update({f"model.{k}": cfg.get("model", {}).get(k) for k in ARCH_FIELDS})
    return keys


def _check_same_model(readers, iterations: list[int]) -> list[str]:
    """The model tensor names, after checking that every input has the first one's model tensors
    (names, shapes, dtypes), architecture (``ARCH_FIELDS``) and precision (``PRECISION_KEYS``).
    AverageError naming the two iterations and what differs."""
    first, names = readers[0], model_tensor_names(readers[0])
    keys = _config_keys(first)
    for r, it in zip(readers[1:], iterations[1:]):
        pair = f"iterations {iterations[0]} and {it}"
        theirs = _config_keys(r)
        changed = [k for k, v in theirs.items() if v != keys[k]]
        if changed:
            diff = "; ".join(f"{k} {keys[k]!r} vs {theirs[k]!r}" for k in changed[:4])
            raise AverageError(f"--iterations: {pair} differ in precision or architecture ({diff}"
                               f"{'; ...' if len(changed) > 4 else ''}): average checkpoints of one model at one "
                               f"precision")
        other = model_tensor_names(r)
        if sorted(other) != sorted(names):
            extra, missing = sorted(set(other) - set(names)), sorted(set(names) - set(other))
            raise AverageError(f"--iterations: {pair}: their model tensors differ ({it} has extra {extra[:3]}, "
                               f"misses {missing[:3]})")
        for n in names:
            if r.shape(n) != first.shape(n):
                raise AverageError(f"--iterations: {pair}: {n} has shape {first.shape(n)} vs {r.shape(n)}")
            if r.tensors[n]["dtype"] != first.tensors[n]["dtype"]:
                raise AverageError(f"--iterations: {pair} differ in precision: {n} is {first.tensors[n]['dtype']} "
                                   f"vs {r.tensors[n]['dtype']}")
    return names


_ITER_DIR = re.compile(r"iter_\d+$")


def _checkpoint_dir(d: str) -> bool:
    """Whether ``d`` is a checkpoint (``metadata.json``) or a run's checkpoint directory (``latest``
    or an ``iter_<N>`` checkpoint in it)."""
    if os.path.isfile(os.path.join(d, "latest")) or os.path.isfile(os.path.join(d, "metadata.json")):
        return True
    try:
        return any(_ITER_DIR.match(e) and os.path.isfile(os.path.join(d, e, "metadata.json")) for e in os.listdir(d))
    except OSError:
        return False


def check_output(output: str, load: str) -> None:
    """AverageError naming --output when it is, or is inside, the --load directory or any other
    checkpoint directory, or is a file or a non-empty directory: averaging writes a new directory
    and never into (or over) a checkpoint."""
    out, src = os.path.realpath(output), os.path.realpath(load)
    if out == src or out.startswith(src.rstrip(os.sep) + os.sep):
        raise AverageError(f"--output {output}: {'is' if out == src else 'is inside'} the --load directory {load}; "
                           f"write the average to a new directory")
    d = out
    while True:
        if _checkpoint_dir(d):
            raise AverageError(f"--output {output}: {'is' if d == out else 'is inside'} the checkpoint directory {d}; "
                               f"write the average to a new directory")
        if os.path.dirname(d) == d:
            break
        d = os.path.dirname(d)
    if os.path.exists(out) and not os.path.isdir(out):
        raise AverageError(f"--output {output}: is a file, not a directory")
    held = sorted(os.listdir(out)) if os.path.isdir(out) else []
    if held:
        more = ", ..." if len(held) > 3 else ""
        raise AverageError(f"--output {output}: is not empty (holds {', '.join(held[:3])}{more}); write the average "
                           f"to a new or empty directory")


def _make_output(output: str) -> None:
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as e:
        raise AverageError(f"--output {output}: cannot create it ({e.strerror or e})") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise AverageError(f"--output {output}: not writable")


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
    memory near one tensor). Raises AverageError for bad arguments (``check_output``,
    ``normalised_weights``, a missing --load directory, inputs of another model or precision),
    FileNotFoundError for a missing iteration, CheckpointError for an unsafe checkpoint."""
    iterations = list(iterations)
    w = normalised_weights(iterations, weights)
    if not os.path.isdir(load):
        raise AverageError(f"--load {load}: the directory does not exist" if not os.path.exists(load)
                           else f"--load {load}: not a directory")
    check_output(output, load)
    readers = [open_checkpoint(load, it, group=None) for it in iterations]
    names = _check_same_model(readers, iterations)
    last = readers[int(max(range(len(iterations)), key=lambda i: iterations[i]))]
    iteration = max(iterations)
    _make_output(output)
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
