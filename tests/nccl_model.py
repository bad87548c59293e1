"""A small model of NCCL point-to-point semantics, to replay what gloo runs cannot show.

gloo matches messages by tag and lets a small send finish before its receive is posted; NCCL
(PyTorch ``ProcessGroupNCCL``) does neither. The rules modelled here (docs/parallelism.md,
shared reference facts):

- tags are ignored: the n-th send from A to B on a communicator meets the n-th receive at B
  from A on that communicator;
- every operation runs on a stream, in issue order: an unbatched send/recv on the stream of its
  rank pair (``lazy``: PyTorch creates one communicator per unordered pair) or of its group
  (``eager``: ``init_process_group(device_id=...)``, all p2p of a group on one communicator); a
  batched call (``batch_isend_irecv``) on its group's communicator in both modes;
- a send completes only when the matching receive is *running* (at the head of the peer's
  stream): rendezvous, as for any message above NCCL's eager buffer (about 1 MiB over the
  network, 4 MiB over NVLink);
- the ops of one batched call run together: the call starts when it reaches the head of its
  stream and finishes when all its ops have met their peers;
- ``work.wait()`` makes the compute stream wait, and every later operation is issued behind the
  compute stream: an item issued after a wait starts only once the waited item has finished;
- a collective finishes when every rank of the group runs it;
- a batched call that is a group's first collective must be joined by every rank of the group
  (torch.distributed.batch_isend_irecv's documentation): flagged.

Input: per rank, a list of events in issue order (what tests record from real runs, or what a
plan says), each one of
``{"type": "call", "id": str, "group": g, "batched": bool, "ops": [{"op": "send"|"recv",
"peer": global rank, "nbytes": int, "label": any}]}``, ``{"type": "coll", "id": str, "group": g,
"ranks": [...]}`` and ``{"type": "wait", "id": str}``. ``label`` is what the message carries
(a content fingerprint): a matched send and receive must carry the same one.
"""
from __future__ import annotations

from collections import defaultdict


def _stream(rank: int, ev: dict, mode: str):
    if ev["type"] == "coll" or ev["batched"] or mode == "eager":
        return (ev["group"], "all")
    peers = {op["peer"] for op in ev["ops"]}
    assert len(peers) == 1, "an unbatched call has one op"
    return (ev["group"], frozenset((rank, peers.pop())))


def replay(events: dict[int, list[dict]], mode: str = "lazy") -> dict:
    """Replays every rank's events. Returns ``{"deadlock": bool, "stuck": {rank: [item ids]},
    "wrong_buffer": [...], "size_mismatch": [...], "unmatched": [...], "first_batch": [...]}``."""
    assert mode in ("lazy", "eager")
    items = {}                     # (rank, id) -> item
    streams = defaultdict(list)    # (rank, stream) -> [item keys] in issue order
    for rank, evs in events.items():
        waited = set()
        for ev in evs:
            if ev["type"] == "wait":
                waited.add((rank, ev["id"]))
                continue
            key = (rank, ev["id"])
            s = _stream(rank, ev, mode)
            items[key] = {"rank": rank, "ev": ev, "stream": s, "deps": set(waited),
                          "prev": streams[(rank, s)][-1] if streams[(rank, s)] else None}
            streams[(rank, s)].append(key)
    # tag-free matching: n-th send A->B on a communicator <-> n-th recv at B from A on it
    sends, recvs, colls = defaultdict(list), defaultdict(list), defaultdict(list)
    for (rank, s), keys in streams.items():
        for key in keys:
            ev = items[key]["ev"]
            if ev["type"] == "coll":
                colls[(s, tuple(sorted(ev["ranks"])))].append(key)
                continue
            for i, op in enumerate(ev["ops"]):
                if op["op"] == "send":
                    sends[(s, rank, op["peer"])].append((key, i))
                else:
                    recvs[(s, op["peer"], rank)].append((key, i))
    partner, report = {}, {"wrong_buffer": [], "size_mismatch": [], "unmatched": [], "first_batch": []}
    for chan in set(sends) | set(recvs):
        a, b = sends.get(chan, []), recvs.get(chan, [])
        for x, y in zip(a, b):
            partner[x], partner[y] = y, x
            sx, ry = items[x[0]]["ev"]["ops"][x[1]], items[y[0]]["ev"]["ops"][y[1]]
            if sx["nbytes"] != ry["nbytes"]:
                report["size_mismatch"].append((x, y))
            elif sx.get("label") != ry.get("label"):
                report["wrong_buffer"].append((x, y, sx.get("label"), ry.get("label")))
        for extra in a[len(b):] + b[len(a):]:
            report["unmatched"].append(extra)
    coll_peers = {}
    for (s, ranks), keys in colls.items():
        per_rank = defaultdict(list)
        for key in keys:
            per_rank[key[0]].append(key)
        for n in range(max(len(v) for v in per_rank.values())):
            group_items = [per_rank[r][n] for r in ranks if n < len(per_rank[r])]
            for key in group_items:
                coll_peers[key] = group_items if len(group_items) == len(ranks) else None
    _check_first_batch(items, report)
    done, op_done = set(), set()

    def active(key):
        it = items[key]
        return (it["prev"] is None or it["prev"] in done) and it["deps"] <= done

    changed = True
    while changed:
        changed = False
        for key, it in items.items():
            if key in done or not active(key):
                continue
            ev = it["ev"]
            if ev["type"] == "coll":
                peers = coll_peers.get(key)
                if peers and all(active(k) for k in peers):
                    done.update(peers)
                    changed = True
                continue
            for i in range(len(ev["ops"])):
                p = partner.get((key, i))
                if (key, i) not in op_done and p is not None and active(p[0]):
                    op_done.update({(key, i), p})
                    changed = True
            if all((key, i) in op_done for i in range(len(ev["ops"]))):
                done.add(key)
                changed = True
    stuck = defaultdict(list)
    for key in items:
        if key not in done:
            stuck[key[0]].append(key[1])
    report["stuck"] = dict(stuck)
    report["deadlock"] = bool(stuck)
    return report


def _check_first_batch(items: dict, report: dict) -> None:
    first = {}
    for key, it in items.items():  # dict order is issue order per rank
        ev = it["ev"]
        g = ev["group"]
        first.setdefault((g, key[0]), ev)
    groups = defaultdict(dict)
    for (g, rank), ev in first.items():
        groups[g][rank] = ev
    for g, per_rank in groups.items():
        if any(ev["type"] == "call" and ev["batched"] for ev in per_rank.values()):
            if not all(ev["type"] == "call" and ev["batched"] for ev in per_rank.values()):
                report["first_batch"].append(g)


def plan_events(p: int, m: int, v: int, forward_only: bool, plan) -> dict[int, list[dict]]:
    """Events of every rank of one pipeline line from a plan (``p2p_plan.exchanges``): each
    exchange is one batched call per communicator, all waited at once; a barrier on each
    communicator first. Labels are the messages themselves."""
    events = {}
    for r in range(p):
        evs = [{"type": "coll", "id": f"warm{g}", "group": g, "ranks": list(range(p))} for g in ("act", "grad")]
        for j, ex in enumerate(plan(p, r, m, v, forward_only)):
            ids = []
            for g in ("act", "grad"):
                ops = [{"op": "send", "peer": msg[3] % p, "nbytes": 1, "label": msg} for msg in ex["send"] if msg[0] == g]
                ops += [{"op": "recv", "peer": msg[2] % p, "nbytes": 1, "label": msg} for msg in ex["recv"] if msg[0] == g]
                if ops:
                    evs.append({"type": "call", "id": f"{j}{g}", "group": g, "batched": True, "ops": ops})
                    ids.append(f"{j}{g}")
            evs += [{"type": "wait", "id": i} for i in ids]
        events[r] = evs
    return events


def plan_makespan(p: int, m: int, v: int, plan, steps, f: float = 1.0, b: float = 2.0) -> float:
    """Time of one training step when each rank runs ``steps`` (p2p_plan.steps) with an exchange
    from ``plan`` before each step (and one after the last), a chunk's forward costing f/v and
    its backward b/v, and messages costing nothing but the rendezvous: an exchange finishes when
    every message in it has both ends posted (the receiver's or sender's exchange has started).
    Compare with schedule_order.simulate, where an op waits only for its input."""
    ex = {r: plan(p, r, m, v, False) for r in range(p)}
    st = {r: steps(p, r, m, v, False) for r in range(p)}
    where = {}  # (message, "send" | "recv") -> (rank, exchange index)
    for r in range(p):
        for j, e in enumerate(ex[r]):
            for msg in e["send"]:
                where[(msg, "send")] = (r, j)
            for msg in e["recv"]:
                where[(msg, "recv")] = (r, j)
    start, end = {}, {}
    pos, clock = [0] * p, [0.0] * p
    progress = True
    while progress:
        progress = False
        for r in range(p):
            while pos[r] < len(ex[r]):
                j = pos[r]
                start[(r, j)] = clock[r]
                peers = [where[(msg, "recv")] for msg in ex[r][j]["send"]] + \
                        [where[(msg, "send")] for msg in ex[r][j]["recv"]]
                if any(q not in start for q in peers):
                    break  # posted (start stays known to the peers); finishes once they post
                end[(r, j)] = max([clock[r]] + [start[q] for q in peers])
                cost = sum((f if kind == "F" else b) / v for kind, _ in st[r][j]) if j < len(st[r]) else 0.0
                clock[r] = end[(r, j)] + cost
                pos[r] += 1
                progress = True
    if any(pos[r] < len(ex[r]) for r in range(p)):
        raise RuntimeError("the plan deadlocks")
    return max(clock)
