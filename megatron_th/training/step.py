"""One optimizer step's forward and backward over the micro-batches (no pipelining).

The loss is the task's (training/tasks) summed micro-batch loss divided by the global batch's
normalizer (for language modelling the count of loss tokens) before backward, so gradients do not
depend on how the batch is split into micro-batches or data-parallel ranks. Pipeline schedules
replace the loop over micro-batches (parallel/pipeline.py) with the same task calls.
"""
from __future__ import annotations

import torch

from megatron_th.data.prefetch import DEVICE_INPUTS, MODEL_INPUT_KEYS
from megatron_th.model.documents import DocumentPlan


def model_inputs(mb: dict, device) -> dict:
    """Keyword arguments of GPTModel.forward for one micro-batch on ``device``.

    tokens, position_ids, labels [b, s] are copied to ``device`` (those present: a pipeline stage
    without the embedding gets no tokens, one without the loss no labels; early copies made by
    data/prefetch.py are taken as they are); the micro-batch's ``cu_seqlens``
    (CPU int32, from the data loader) becomes ``documents``: a DocumentPlan validated and laid out
    here on the host, once per micro-batch, so that no attention layer reads device values (a host
    sync per layer on a GPU). Raises ValueError for invalid cu_seqlens.
    """
    early = mb.get(DEVICE_INPUTS, {})
    out = {k: early[k] if k in early else mb[k].to(device, non_blocking=True) for k in MODEL_INPUT_KEYS if k in mb}
    if mb.get("cu_seqlens") is not None:
        b, s = mb["tokens" if "tokens" in mb else "position_ids"].shape  # no tokens past the first stage
        out["documents"] = DocumentPlan(mb["cu_seqlens"], b, s, device=torch.device(device))
    return out


def unused_inputs(groups) -> set:
    """Micro-batch keys this rank's pipeline stages never read, left out when the loop's batches
    are built (data/prefetch.py ``drop_keys``): ``tokens`` past the first stage (the embedding's
    input), ``labels`` before the last (the loss's). Position ids, cu_seqlens and the loss mask
    (the normalizer every rank computes) reach every stage."""
    return ({"tokens"} if not groups.is_first_stage else set()) | ({"labels"} if not groups.is_last_stage else set())


def _default_task():
    from megatron_th.training.tasks.lm import LanguageModelTask
    return LanguageModelTask(None)


def forward_backward(model, micro_batches: list[dict], num_tokens: float, loss_scale: float, device,
                     task=None) -> torch.Tensor:
    """Runs forward+backward on every micro-batch; returns the summed task statistics (float64
    [k]; element 0 the summed unscaled loss). ``num_tokens``: the global normalizer."""
    task = task or _default_task()
    total = None
    for mb in micro_batches:
        per_token = model(**model_inputs(mb, device))
        loss, stats = task.loss(per_token, mb)
        (loss * (loss_scale / num_tokens)).backward()
        total = stats if total is None else total + stats
    return total


@torch.no_grad()
def forward_only(model, micro_batches: list[dict], device, task=None) -> list[torch.Tensor]:
    """Per-sample evaluation statistics (task.eval_stats; language modelling: summed loss, loss
    tokens): list of [mbs, k] tensors."""
    task = task or _default_task()
    return [task.eval_stats(model(**model_inputs(mb, device)), mb) for mb in micro_batches]


class Stepper:
    """Runs one step's micro-batches on this rank's model chunks: plain gradient accumulation
    without pipelining, else the 1F1B / interleaved 1F1B pipeline. Returns the global batch's
    summed masked loss on every rank."""

    def __init__(self, chunks, groups, cfg, dtype, device, trace: bool = False, buffers=None, finalize=None,
                 task=None):
        self.chunks, self.groups, self.device = chunks, groups, device
        self.buffers, self.finalize = buffers, finalize
        self.task = task or _default_task()
        self.pipe = None
        if groups.pp > 1:
            from megatron_th.parallel.pipeline import PipelineRunner

            m = cfg.model
            sp = cfg.parallel.sequence_parallel and groups.tp > 1
            shape = (cfg.data.micro_batch_size, m.seq_length // groups.tp if sp else m.seq_length, m.hidden_size)
            self.pipe = PipelineRunner(chunks, groups, shape, dtype, device, trace, task=self.task)

    def num_tokens(self, micro_batches) -> float:
        """The global batch's normalizer (all DP ranks), task.begin_step: the sum of
        task.normalizer over every micro-batch (language modelling: loss tokens)."""
        from megatron_th.parallel import comm

        def all_reduce(values: list[float]) -> list[float]:
            t = torch.tensor(values, dtype=torch.float64, device=self.device)
            return comm.all_reduce(t, self.groups.dp_group).tolist()
        return float(self.task.begin_step(micro_batches, all_reduce))

    def train(self, micro_batches, num_tokens: float, loss_scale: float) -> torch.Tensor:
        """Forward+backward of this rank's micro-batches, then the gradient reductions; returns the
        global batch's summed task statistics (float64 [k], element 0 the summed loss; every rank)."""
        from megatron_th.parallel import comm

        if self.buffers is not None:
            self.buffers.start_step(len(micro_batches))
        if self.pipe is None:
            total = forward_backward(self.chunks[0], micro_batches, num_tokens, loss_scale, self.device, self.task)
        else:
            total, _ = self.pipe.run(micro_batches, num_tokens, loss_scale)
            total = comm.all_reduce(total, self.groups.pp_group)
        if self.buffers is not None:
            self.buffers.finish(self.finalize)
        elif self.finalize is not None:
            self.finalize()
        return comm.all_reduce(total, self.groups.dp_group)

    def eval(self, micro_batches) -> torch.Tensor | None:
        """Per-sample [n, k] task evaluation statistics on the last stage; None elsewhere."""
        if self.pipe is None:
            return torch.cat(forward_only(self.chunks[0], micro_batches, self.device, self.task))
        _, stats = self.pipe.run(micro_batches, 1.0, 1.0, forward_only=True)
        return torch.cat(stats) if stats else None
