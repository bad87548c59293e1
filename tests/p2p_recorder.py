"""Record what a pipeline rank really asks of torch.distributed, for the NCCL model (nccl_model.py).

``Recorder`` patches ``isend`` / ``irecv`` / ``batch_isend_irecv`` / ``barrier`` in
``torch.distributed`` while it is active and logs, in issue order, every call (batched or not,
its group, peers, bytes, a fingerprint of the data sent), every ``wait()`` on its work, and what
each receive actually got (the fingerprint of the buffer after the wait: gloo matches tags, so
this is the tensor the executor meant to receive). It also keeps a weak reference to the storage
of every sent tensor: once a send's work has been waited, the executor must hold nothing that
keeps it alive, which ``check_leaks()`` reports at the next call and at the end of a run. The
backend is handed a copy of every sent tensor (gloo itself keeps sent tensors alive past the
wait), so what is measured is the executor's references alone.

``record_runs`` builds a tiny model for every (p, m, v, train/eval) on this rank's pipeline line
and runs the real executor under a Recorder. Run directly (``python tests/p2p_recorder.py OUT``)
it writes a fixture from whatever megatron_th is on the path (how tests/fixtures/
p2p_order_b6a12b9.json was made, from commit b6a12b9's executor).
"""
from __future__ import annotations

import hashlib
import weakref

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d


def fingerprint(t: torch.Tensor) -> str:
    return hashlib.sha1(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def _group_name(group) -> str:
    return "world" if group is None else group.group_name


class _Work:
    def __init__(self, rec, work, call_id, recv_ops):
        self.rec, self.work, self.call_id, self.recv_ops = rec, work, call_id, recv_ops

    def wait(self, *a, **k):
        out = self.work.wait(*a, **k)
        self.rec._waited(self.call_id, self.recv_ops)
        self.work = self.recv_ops = None  # hold nothing once done
        return out

    def is_completed(self):
        return self.work is None or self.work.is_completed()


class Recorder:
    def __init__(self):
        self.events, self.leaked, self.sent = [], [], {}  # call id -> [storage weakrefs]
        self.works = {}  # call id -> its wrapped works
        self._n, self._inside, self._saved = 0, False, {}

    # -- patching ----------------------------------------------------------------------------
    def __enter__(self):
        orig = {name: getattr(c10d, name) for name in ("isend", "irecv", "batch_isend_irecv", "barrier")}
        self._saved = orig

        def isend(tensor, dst=None, group=None, tag=0, group_dst=None):
            return self._single("send", orig["isend"], tensor, dst, group, tag, group_dst)

        def irecv(tensor, src=None, group=None, tag=0, group_src=None):
            return self._single("recv", orig["irecv"], tensor, src, group, tag, group_src)

        def batch(ops):
            return self._batch(orig["batch_isend_irecv"], ops)

        def barrier(group=None, *a, **k):
            if group is not None:
                ranks = dist.get_process_group_ranks(group)
                self._new({"type": "coll", "group": _group_name(group), "ranks": ranks})
            return orig["barrier"](group, *a, **k)

        self._fns = {"isend": isend, "irecv": irecv, "batch_isend_irecv": batch, "barrier": barrier}
        for mod in (dist, c10d):
            for name, fn in self._fns.items():
                setattr(mod, name, fn)
        return self

    def __exit__(self, *exc):
        for mod in (dist, c10d):
            for name, fn in self._saved.items():
                setattr(mod, name, fn)

    # -- recording -----------------------------------------------------------------------------
    def _new(self, ev: dict) -> str:
        self.check_leaks()
        ev["id"] = f"c{self._n}"
        self._n += 1
        self.events.append(ev)
        return ev["id"]

    def _op(self, kind, tensor, peer, group):
        if peer is None:
            raise AssertionError("record: pass the peer's global rank")
        op = {"op": kind, "peer": int(peer), "nbytes": tensor.numel() * tensor.element_size()}
        if kind == "send":
            op["label"] = fingerprint(tensor)
        return op

    def _single(self, kind, fn, tensor, peer, group, tag, group_peer):
        if self._inside:
            kw = {"group_dst" if kind == "send" else "group_src": group_peer} if group_peer is not None else {}
            return fn(tensor, peer, group, tag, **kw) if not kw else fn(tensor, group=group, tag=tag, **kw)
        cid = self._new({"type": "call", "group": _group_name(group), "batched": False,
                         "ops": [self._op(kind, tensor, peer, group)]})
        if kind == "send":
            self.sent[cid] = [weakref.ref(tensor.untyped_storage())]
            tensor = tensor.clone()  # the backend may keep what it sent: hand it a copy
        proxy = torch.empty_like(tensor) if kind == "recv" else tensor
        work = _Work(self, fn(proxy, peer, group, tag), cid, [(0, tensor, proxy)] if kind == "recv" else [])
        self.works[cid] = [work]
        return work

    def _batch(self, fn, p2p_ops):
        group = p2p_ops[0].group
        ops = [self._op("send" if o.op is self._fns["isend"] else "recv", o.tensor, o.peer, group) for o in p2p_ops]
        cid = self._new({"type": "call", "group": _group_name(group), "batched": True, "ops": ops})
        self.sent[cid] = [weakref.ref(o.tensor.untyped_storage()) for o, op in zip(p2p_ops, ops) if op["op"] == "send"]
        recv_ops = []
        for i, (o, op) in enumerate(zip(p2p_ops, ops)):
            # gloo keeps the tensors of a finished op alive: it gets copies, so that only the
            # executor's own references keep the originals (a received gradient can become the
            # gradient that is sent on)
            if op["op"] == "send":
                o.tensor = o.tensor.clone()
            else:
                recv_ops.append((i, o.tensor))
                o.tensor = torch.empty_like(o.tensor)
                recv_ops[-1] += (o.tensor,)
        self._inside = True
        try:
            works = fn(p2p_ops)
        finally:
            self._inside = False
        if len(works) == len(p2p_ops):  # one work per op (gloo): each receive labelled at its own wait
            wrapped = [_Work(self, w, cid, [r for r in recv_ops if r[0] == i]) for i, w in enumerate(works)]
        else:
            wrapped = [_Work(self, w, cid, recv_ops if i == len(works) - 1 else []) for i, w in enumerate(works)]
        self.works[cid] = wrapped
        return wrapped

    def _waited(self, cid, recv_ops):
        self.events.append({"type": "wait", "id": cid})
        ev = next(e for e in reversed(self.events) if e.get("id") == cid and e["type"] != "wait")
        for i, t, proxy in recv_ops:
            t.copy_(proxy)
            ev["ops"][i]["label"] = fingerprint(t)
        self._done = getattr(self, "_done", set()) | {cid}

    def check_leaks(self, all_sent: bool = False) -> None:
        """A send whose work has completed (waited, or reported complete by the backend) must no
        longer be kept alive by anyone; with ``all_sent`` (called when the executor starts a
        forward), no send issued before may be alive either: nothing sent waits for the end of
        the step."""
        for cid in list(self.sent):
            works = self.works.get(cid, [])
            if all_sent or cid in getattr(self, "_done", ()) or (works and all(w.is_completed() for w in works)):
                if any(ref() is not None for ref in self.sent.pop(cid)):
                    self.leaked.append(cid)


def _tiny_runner(p, v, m, groups):
    from megatron_th.config import finalize, parse_config
    from megatron_th.parallel.pipeline import PipelineRunner
    from megatron_th.parallel.stages import build_chunks

    flags = ["--num-layers", str(p * v), "--hidden-size", "8", "--num-attention-heads", "2", "--seq-length", "8",
             "--micro-batch-size", "1", "--global-batch-size", str(m * groups.dp),
             "--pipeline-model-parallel-size", str(p), "--hidden-dropout", "0", "--attention-dropout", "0",
             "--make-vocab-size-divisible-by", "8"]
    if v > 1:
        flags += ["--num-layers-per-virtual-pipeline-stage", "1"]
    cfg, _ = parse_config(flags)
    finalize(cfg, dist.get_world_size())
    chunks = build_chunks(cfg, 64, groups, torch.device("cpu"), torch.float32)
    return PipelineRunner(chunks.chunks, groups, (1, 8, 8), torch.float32, torch.device("cpu"))


def _micro_batches(m, seed):
    g = torch.Generator().manual_seed(seed)
    return [{"tokens": torch.randint(0, 64, (1, 8), generator=g), "labels": torch.randint(0, 64, (1, 8), generator=g),
             "loss_mask": torch.ones(1, 8), "position_ids": torch.arange(8).unsqueeze(0)} for _ in range(m)]


def record_runs(cases, pp_sizes) -> dict:
    """{(p, m, v, forward_only): {"events": [...], "leaked": [...]}} for this rank; ``cases(p)``
    lists the (m, v, forward_only) to run for PP size p; the world is split into DP lines."""
    from megatron_th.parallel import pipeline
    from megatron_th.parallel.groups import ParallelGroups

    out = {}
    world = dist.get_world_size()
    for p in pp_sizes:
        groups = ParallelGroups.build(1, p, world // p)
        for v in sorted({c[1] for c in cases(p)}):
            with Recorder() as rec:
                runner = _tiny_runner(p, v, max(c[0] for c in cases(p) if c[1] == v), groups)
                warm = list(rec.events)
            for m, v_, fo in cases(p):
                if v_ != v:
                    continue
                with Recorder() as rec:
                    rec.events = [dict(e) for e in warm]  # the runner's set-up collectives come first
                    rec._n = len(warm)
                    hooks = [c.register_forward_pre_hook(lambda *a: rec.check_leaks(all_sent=True))
                             for c in runner.chunks]
                    made = []  # micro-batches whose inputs (and document plan) the executor built
                    real = pipeline.model_inputs
                    pipeline.model_inputs = lambda mb, device: made.append(id(mb)) or real(mb, device)
                    try:
                        runner.run(_micro_batches(m, 1000 * m + v), 1.0, 1.0, forward_only=fo)
                    finally:
                        pipeline.model_inputs = real
                    rec.check_leaks(all_sent=True)
                    for h in hooks:
                        h.remove()
                out[(p, m, v, fo)] = {"events": rec.events, "leaked": rec.leaked, "rank": dist.get_rank(),
                                      "line": [groups.stage_rank(s) for s in range(p)],
                                      "inputs_built": len(made), "inputs_distinct": len(set(made))}
    return out


def _fixture_body(rank, world):
    return record_runs(lambda p: [(3, 1, False)] if p == 2 else [(4, 2, False)], [2, 4])


if __name__ == "__main__":
    import json
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests import dist as D

    per_rank = D.run(_fixture_body, 4, timeout=120)
    fixture = {}
    for res in per_rank:
        for (p, m, v, fo), rec in res.items():
            if rec["rank"] in rec["line"] and rec["line"][0] in (0,):  # the line of rank 0
                fixture.setdefault(f"p{p}_m{m}_v{v}_{'eval' if fo else 'train'}", {})[str(rec["rank"])] = rec["events"]
    with open(sys.argv[1], "w") as f:
        json.dump(fixture, f, indent=0)
    print("wrote", sys.argv[1], {k: len(v) for k, v in fixture.items()})
