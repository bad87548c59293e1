"""The per-micro-batch document layout, validated and planned once on the host.

With document masking every attention layer of a step needs the same facts about ``cu_seqlens``:
is it valid, does it split any row, the longest document, and per backend some index tensors
(varlen, plus one banded causal mask per group under a sliding window), document ids (dense), a
flex block mask (one per window) or the int32 boundaries on the device (flash, te). Data that
depends on the sliding window is cached per window, so a model whose layers use different windows
(Gemma 3 interleaves local and global layers) prepares the plan once per distinct window.
Reading a device tensor's values from the host (``.tolist()``, ``int()``, ``bool()``) blocks the
CPU until the GPU has caught up; doing it in every layer costs one sync per layer and backend call
(thousands per step). A ``DocumentPlan`` is built once per micro-batch from
the CPU ``cu_seqlens`` the data loader yields (training/step.py ``model_inputs``), prepared for the
model's backend before the first layer (``GPTModel.forward``), and handed down to every layer, so
nothing inside a layer reads device values. Everything a backend needs is cached on the plan:
a layer only looks it up.

Host-to-device copies made here come from pinned memory with ``non_blocking=True`` on CUDA: a copy
from pageable memory, or any ``non_blocking=False`` copy, synchronises the stream (PyTorch
aten/src/ATen/native/cuda/Copy.cu calls ``cudaStreamSynchronize`` unless non_blocking).
"""
from __future__ import annotations

import functools
import itertools

import torch

__all__ = ["DocumentPlan", "check_cu_seqlens", "window_causal_mask"]

# varlen grouping cost model, fitted on CPU for heads * head_dim = 512 (ms ~ units * 4.6e-5):
# a document of length P padded to L costs L * (L + _LINEAR); one SDPA call (fwd+bwd) costs
# _CALL_COST on top. Only speed depends on these numbers, never the result.
_LINEAR = 200
_CALL_COST = 6000


@functools.lru_cache(maxsize=64)
def check_cu_seqlens(cu: tuple, b: int, s: int) -> None:
    """Raise ValueError unless ``cu`` (host tuple of ints) is a valid THD boundary list for a
    ``[b, s]`` batch: starts at 0, ends at b*s, strictly increasing, contains every multiple of s."""
    ok = (len(cu) >= 2 and cu[0] == 0 and cu[-1] == b * s
          and all(x < y for x, y in zip(cu, cu[1:])) and set(range(0, b * s + 1, s)) <= set(cu))
    if not ok:
        raise ValueError(f"cu_seqlens must start at 0, end at b*s={b * s}, increase strictly and "
                         f"contain every multiple of s={s}; got {list(cu)[:16]}...")


@functools.lru_cache(maxsize=16)
def _varlen_plan(cu: tuple, s: int, width: int):
    """Host (CPU) varlen layout of the documents in ``cu``.

    -> (gather [T_pad] long: flat token of every row of the padded buffer, group shapes
    [(n, P)]: n documents padded at their end to length P, slot [b*s] long: the buffer row holding
    each flat token's output). ``width`` = local heads * head_dim only tunes the grouping (speed)."""
    by_len: dict[int, list[int]] = {}
    for start, end in zip(cu, cu[1:]):
        by_len.setdefault(end - start, []).append(start)
    lens = sorted(by_len)
    count = [0, *itertools.accumulate(len(by_len[n]) for n in lens)]  # documents in lens[:j]
    call = _CALL_COST * 512 / width
    best, cut = [0.0], [0]  # best[j]: cheapest grouping of lens[:j]; last group is lens[cut[j]:j]
    for j in range(1, len(lens) + 1):
        w = lens[j - 1] * (lens[j - 1] + _LINEAR)
        c, i = min((best[i] + call + (count[j] - count[i]) * w, i) for i in range(j))
        best.append(c)
        cut.append(i)
    groups, j = [], len(lens)
    while j:
        groups.append(lens[cut[j]:j])
        j = cut[j]
    gather, shapes, base = [], [], 0
    slot = torch.empty(cu[-1], dtype=torch.long)  # flat token -> its row in the padded buffer
    for group in groups:
        starts = torch.tensor([st for n in group for st in by_len[n]]).unsqueeze(1)
        length = torch.tensor([n for n in group for _ in by_len[n]]).unsqueeze(1)
        ar = torch.arange(group[-1])
        gather.append((starts + torch.minimum(ar, length - 1)).flatten())  # pad = last token
        valid = (ar < length).flatten()
        slot[gather[-1][valid]] = base + valid.nonzero().squeeze(1)
        shapes.append((len(length), group[-1]))
        base += gather[-1].numel()
    return torch.cat(gather), shapes, slot


def window_causal_mask(n: int, window: int | None, device=None) -> torch.Tensor:
    """Bool ``[n, n]`` mask, True where query i may see key j: ``0 <= i - j < window`` (causal
    sliding window, transformers' ``sliding_window_causal_mask_function``; see attention.py), or
    plain causal ``j <= i`` when ``window`` is None. Built on ``device`` from host ints: no sync."""
    mask = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    return mask if window is None else mask.triu(1 - window)


@functools.cache
def _compiled_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask
    return torch.compile(create_block_mask)


def _canonical(device) -> torch.device:
    """torch.device with its index filled in ("cuda" -> "cuda:<current>"), so cache keys match
    the device of the tensors that look them up."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without a host sync (pinned + non_blocking on CUDA)."""
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


class DocumentPlan:
    """Validated document boundaries of one ``[batch, seq]`` micro-batch, with per-backend caches.

    Args:
        cu_seqlens: 1-D integer tensor (or sequence of ints) of THD boundaries over the flattened
            batch (see attention.py's module docstring). Give the CPU tensor the data loader
            yields: a tensor on an accelerator is read once here (one host sync).
        batch, seq: the micro-batch shape ``b`` and ``s`` (the full sequence, also under sequence
            parallelism).
        device: where the device-side tensors go (default: the device of ``cu_seqlens``).

    Raises ValueError (naming cu_seqlens) if the boundaries are not 1-D integers starting at 0,
    ending at b*s, strictly increasing and containing every multiple of s.

    Host attributes (plain Python, free to read in a layer): ``batch``, ``seq``, ``bounds``
    (tuple of ints), ``has_boundaries`` (some row holds more than one document), ``max_len``
    (longest document), ``device``. Device data is built on first request and cached per device
    (and per sliding window where it depends on one); ``attention.prepare_documents`` requests what
    a backend needs before the layers run.
    """

    def __init__(self, cu_seqlens, batch: int, seq: int, device=None):
        if isinstance(cu_seqlens, torch.Tensor):
            if cu_seqlens.dim() != 1 or cu_seqlens.is_floating_point() or cu_seqlens.is_complex():
                raise ValueError("cu_seqlens must be a 1-D integer (int32) tensor")
            if device is None:
                device = cu_seqlens.device
            bounds = tuple(cu_seqlens.tolist())  # the plan's only read of tensor values
        else:
            bounds = tuple(int(x) for x in cu_seqlens)
        check_cu_seqlens(bounds, batch, seq)
        self.batch, self.seq, self.bounds = int(batch), int(seq), bounds
        self.device = _canonical("cpu" if device is None else device)
        self.has_boundaries = any(x % self.seq for x in bounds)
        self.max_len = max(y - x for x, y in zip(bounds, bounds[1:]))
        self._cache: dict = {}

    def __repr__(self) -> str:
        return (f"DocumentPlan(batch={self.batch}, seq={self.seq}, documents={len(self.bounds) - 1}, "
                f"max_len={self.max_len}, device={self.device})")

    def _cached(self, key, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def _dev(self, device) -> torch.device:
        return self.device if device is None else _canonical(device)

    def cu_seqlens(self, device=None) -> torch.Tensor:
        """int32 [documents + 1] boundaries on ``device`` (flash_attn / Transformer Engine input)."""
        device = self._dev(device)
        return self._cached(("cu", device), lambda: _to_device(
            torch.tensor(self.bounds, dtype=torch.int32), device))

    def doc_ids(self, device=None) -> torch.Tensor:
        """LongTensor [batch, seq] on ``device``: every token's document id (unique over the batch)."""
        device = self._dev(device)

        def build():
            lengths = torch.tensor([y - x for x, y in zip(self.bounds, self.bounds[1:])])
            ids = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
            return _to_device(ids.view(self.batch, self.seq), device)
        return self._cached(("doc_ids", device), build)

    def varlen(self, width: int, device=None):
        """(gather, shapes, slot) of ``_varlen_plan`` with the index tensors on ``device``."""
        device = self._dev(device)

        def build():
            gather, shapes, slot = _varlen_plan(self.bounds, self.seq, width)
            return _to_device(gather, device), shapes, _to_device(slot, device)
        return self._cached(("varlen", width, device), build)

    def varlen_masks(self, width: int, window: int | None, device=None) -> tuple:
        """One entry per group of ``varlen(width)``: None (plain causal SDPA: no window, or the
        group's padded length P <= window) or the bool ``[P, P]`` ``window_causal_mask`` on
        ``device``. Positions inside a padded group are positions inside each document, so one
        mask serves every document of the group."""
        device = self._dev(device)

        def build():
            _, shapes, _ = self.varlen(width, device)
            return tuple(None if window is None or p <= window else window_causal_mask(p, window, device)
                         for _, p in shapes)
        return self._cached(("varlen_masks", width, window, device), build)

    def block_mask(self, device=None, window: int | None = None):
        """flex_attention BlockMask (causal AND same document AND, with ``window``, query minus key
        position < window; [batch, 1 head, seq, seq]), cached per (device, window).

        Built by torch.nn.attention.flex_attention.create_block_mask, compiled on CUDA (as the
        FlexAttention docs advise: eager construction materialises a [b, s, s] mask), eager
        elsewhere. Raises ImportError if this torch has no flex_attention."""
        device = self._dev(device)

        def build():
            try:
                from torch.nn.attention.flex_attention import create_block_mask
            except ImportError as e:
                raise ImportError(f"attention backend 'flex' needs torch.nn.attention.flex_attention: {e}")
            doc = self.doc_ids(device)

            def same_doc_causal(bi, hi, qi, ki):
                return (qi >= ki) & (doc[bi, qi] == doc[bi, ki])

            def same_doc_window(bi, hi, qi, ki):
                return (qi >= ki) & (qi - ki < window) & (doc[bi, qi] == doc[bi, ki])

            make = _compiled_create_block_mask() if device.type == "cuda" else create_block_mask
            mask_mod = same_doc_causal if window is None else same_doc_window
            return make(mask_mod, self.batch, None, self.seq, self.seq, device=device)
        return self._cached(("block_mask", window, device), build)
