"""Near-duplicate and exact-duplicate removal on datatrove's MinHash stages, keeping the first copy.

Stages (the middle one is datatrove's own ``MinhashDedupBuckets``):

1. ``InputOrderMinhashSignature`` (N tasks) = datatrove's ``MinhashDedupSignature`` -- b buckets of
   r MinHash values over the document's shingles, each bucket's (values, doc index) records sorted
   per task -- plus files of its own: ``order/{rank}.npy``, each document's input order key
   ``file_index << 32 | line``; ``full/{rank}.npy``, each document's b·r values (low 32 bits); and
   one extra bucket ``bucket_{b:03d}`` whose "signature" is a hash of ``text.collapse(doc.text)``
   (NFC, whitespace collapsed): two documents share it only when their texts are equal, so that
   bucket finds the exact duplicates.
2. ``MinhashDedupBuckets`` with b + 1 buckets ((b + 1) x k tasks, k workers per bucket): pairs of
   documents with an equal bucket signature, in ``{bucket:05d}_{worker:02d}.dups``.
3. ``InputOrderMinhashCluster`` (1 task): each MinHash pair is verified first -- kept only when the
   share of its b·r values that agree, an estimate of the shingles' Jaccard similarity, is at
   least ``min_jaccard`` (datatrove keeps every pair that shares a bucket, and a few pairs far
   below the threshold do) -- then the connected components of all pairs; in each, the
   document first in input order (sorted file path, then line) is kept -- datatrove's
   ``MinhashDedupCluster`` keeps the root of a union by size, which depends on how the input was
   split into tasks. A removed document is ``exact_dedup/exact_duplicate`` when an earlier document
   has exactly its text, else ``minhash_dedup/near_duplicate``; ``duplicate_of`` names the copy kept.
4. ``InputOrderMinhashFilter`` (N tasks): drops the removed documents from the same task streams.

LSH: a pair with Jaccard similarity s over the shingles shares at least one of b buckets of r
values with probability P(s) = 1 - (1 - s^r)^b; the threshold where P rises fastest is about
(1/b)^(1/r) (datatrove's 14 x 8: 0.72, P(0.8) = 0.924, P(0.5) = 0.053; docs/data.md tabulates
the defaults). Shingles are character n-grams (``tokenizers.CharTokenizer``) or words.
"""
from __future__ import annotations

import glob
import hashlib
import os
import struct
from array import array

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.typeshelper import StatHints

from megatron_th.data.clean.records import RemovedWriter
from megatron_th.data.clean.text import collapse

EXACT, NEAR = 1, 2
REASONS = {EXACT: "exact_dedup/exact_duplicate", NEAR: "minhash_dedup/near_duplicate"}
_REMOVE = np.dtype([("doc", "<u4"), ("reason", "<u1"), ("root", "<u8")])


def lsh_probability(s: float, num_buckets: int, hashes_per_bucket: int) -> float:
    """P(a pair with Jaccard ``s`` shares a bucket) = 1 - (1 - s^r)^b."""
    return 1.0 - (1.0 - s ** hashes_per_bucket) ** num_buckets


def lsh_threshold(num_buckets: int, hashes_per_bucket: int) -> float:
    """(1/b)^(1/r): the similarity near which the LSH S-curve is steepest."""
    return (1.0 / num_buckets) ** (1.0 / hashes_per_bucket)


def order_key(order) -> int:
    """``[file_index, line]`` -> ``file_index << 32 | line`` (both below 2^32)."""
    return (int(order[0]) << 32) | int(order[1])


def _save(path: str, arr: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.npy"
    np.save(tmp, arr)
    os.replace(tmp, path)


class InputOrderMinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash signatures plus the input order and the exact-text bucket (see the
    module docstring). ``config.num_buckets`` is b; the exact bucket is number b."""

    name = "🎯 MinHash stage 1 (+ input order, exact text)"

    def __init__(self, output_folder: str, config: MinhashConfig, language):
        super().__init__(output_folder=output_folder, config=config, language=language)
        self.output_path = output_folder
        self._full, self._full_order = {}, array("Q")  # signatures of the documents of the running task

    def exact_signature(self, text: str) -> list[int]:
        """``hashes_per_bucket`` values from SHAKE-256 of the collapsed text, each below the
        largest hash datatrove's bucket reader accepts (2^60 at 64-bit precision, 2^28 at 32)."""
        r, bits = self.config.hashes_per_bucket, self.config.hash_config.precision
        digest = hashlib.shake_256(collapse(text).encode("utf-8")).digest(8 * r)
        mask = (1 << (bits - 4)) - 1
        return [v & mask for v in struct.unpack(f"<{r}Q", digest)]

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        sig = super().get_signature(shingles)  # datatrove's run calls this once per document with shingles
        self._full[len(self._full_order) - 1] = sig
        return sig

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        order, exact = array("Q"), []
        self._full, self._full_order = {}, order

        def tap(docs):
            for doc in docs:
                order.append(order_key(doc.metadata["order"]))
                exact.append(self.exact_signature(doc.text))
                yield doc

        super().run(tap(data or ()), rank, world_size)
        _save(os.path.join(self.output_path, "order", f"{rank:05d}.npy"), np.frombuffer(order, dtype=np.uint64))
        full = np.zeros((len(order), self.num_hashes), np.uint32)
        for i, sig in self._full.items():
            full[i] = np.asarray(sig, dtype=np.uint64).reshape(-1) & 0xFFFFFFFF
        _save(os.path.join(self.output_path, "full", f"{rank:05d}.npy"), full)
        self._full = {}
        r, fmt = self.config.hashes_per_bucket, self.config.hash_config.struct_format
        dtype = np.dtype([(f"h{i}", f"<{fmt}") for i in range(r)] + [("doc", "<u4")])
        records = np.array([(*sig, i) for i, sig in enumerate(exact)], dtype=dtype)
        records.sort(order=list(dtype.names))
        with self.output_folder.open(f"bucket_{self.config.num_buckets:03d}/{rank:05d}.minhash.sig", "wb") as f:
            f.write(records.tobytes())


class _UnionFind:
    """Union-find over int keys whose root is always the smallest key of the set."""

    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:  # path compression
            self.parent[x], x = root, self.parent.get(x, x)
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo
            self.parent.setdefault(lo, lo)


def _gather(full: dict, tasks: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Rows ``full[tasks[i]][docs[i]]``, one pass per task (grouped by sorting)."""
    order = np.argsort(tasks, kind="stable")
    out = np.empty((len(tasks), next(iter(full.values())).shape[1]), np.uint32)
    bounds = np.flatnonzero(np.diff(tasks[order])) + 1
    for group in np.split(order, bounds):
        if len(group):
            out[group] = full[int(tasks[group[0]])][docs[group]]
    return out


def estimated_jaccard(full: dict, pairs: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """Share of agreeing MinHash values for each pair ``(task1, doc1, task2, doc2)`` of ``pairs``
    (uint32 ``[n, 4]``), from the per-task signature arrays ``full[task]`` (``[docs, b·r]``);
    ``chunk`` pairs at a time."""
    out = np.empty(len(pairs))
    for lo in range(0, len(pairs), chunk):
        p = pairs[lo:lo + chunk]
        out[lo:lo + chunk] = (_gather(full, p[:, 0], p[:, 1]) == _gather(full, p[:, 2], p[:, 3])).mean(axis=1)
    return out


class InputOrderMinhashCluster(PipelineStep):
    """Stage 3 (one task): reads every ``*.dups`` file of ``dups_folder`` (bucket ``exact_bucket``
    holds exact-text pairs) and the order and full-signature files of ``signatures_folder``;
    drops MinHash pairs whose estimated Jaccard is below ``min_jaccard``; writes
    ``output_folder/{rank:05d}.npy`` per signature task: the documents to remove (index in that
    task's stream, reason EXACT or NEAR, order key of the copy kept), sorted by index."""

    type = "🫂 - DEDUP"
    name = "🎯 MinHash stage 3 (first in input order)"

    def __init__(self, dups_folder: str, signatures_folder: str, output_folder: str, exact_bucket: int,
                 min_jaccard: float = 0.0):
        super().__init__()
        self.dups_folder, self.signatures_folder = dups_folder, signatures_folder
        self.output_folder, self.exact_bucket, self.min_jaccard = output_folder, exact_bucket, min_jaccard

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        assert world_size == 1, "the cluster stage runs as one task"
        orders = {int(os.path.basename(p)[:5]): np.load(p)
                  for p in glob.glob(os.path.join(self.signatures_folder, "order", "*.npy"))}
        full = {int(os.path.basename(p)[:5]): np.load(p, mmap_mode="r")
                for p in glob.glob(os.path.join(self.signatures_folder, "full", "*.npy"))}
        where: dict[int, tuple[int, int]] = {}
        clusters, exact = _UnionFind(), _UnionFind()
        with self.track_time():
            for path in sorted(glob.glob(os.path.join(self.dups_folder, "*.dups"))):
                is_exact = int(os.path.basename(path)[:5]) == self.exact_bucket
                pairs = np.fromfile(path, dtype="<u4").reshape(-1, 4)
                if not is_exact and self.min_jaccard > 0 and len(pairs):
                    ok = estimated_jaccard(full, pairs) >= self.min_jaccard
                    self.stat_update("unverified_pairs", value=int((~ok).sum()))
                    pairs = pairs[ok]
                for f1, d1, f2, d2 in pairs.tolist():
                    a, b = int(orders[f1][d1]), int(orders[f2][d2])
                    where[a], where[b] = (f1, d1), (f2, d2)
                    clusters.union(a, b)
                    if is_exact:
                        exact.union(a, b)
                    self.stat_update("exact_pairs" if is_exact else "near_pairs")
            removed: dict[int, list] = {r: [] for r in orders}
            for key, (task, doc) in where.items():
                root = clusters.find(key)
                if root != key:
                    reason = EXACT if exact.find(key) != key else NEAR
                    removed[task].append((doc, reason, root))
                    self.stat_update(REASONS[reason])
        for task, rows in removed.items():
            arr = np.array(sorted(rows), dtype=_REMOVE)
            _save(os.path.join(self.output_folder, f"{task:05d}.npy"), arr)


class InputOrderMinhashFilter(PipelineStep):
    """Stage 4: this task's stream without the documents stage 3 removed; those go to
    ``exclusion_writer`` with ``removed_by`` (``REASONS``) and ``duplicate_of = "path:line"``.

    Args:
        remove_folder: stage 3's output.
        paths: the sorted input files (to name the kept copy).
    """

    type = "🫂 - DEDUP"
    name = "🎯 MinHash stage 4 (with reasons)"

    def __init__(self, remove_folder: str, paths: list[str], exclusion_writer: DiskWriter | None = None):
        super().__init__()
        self.remove_folder, self.paths = remove_folder, list(paths)
        self.exclusion_writer = exclusion_writer
        RemovedWriter.attach(exclusion_writer, self)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        path = os.path.join(self.remove_folder, f"{rank:05d}.npy")
        remove = np.load(path) if os.path.exists(path) else np.zeros(0, _REMOVE)
        todo = {int(r["doc"]): (int(r["reason"]), int(r["root"])) for r in remove}
        writer = self.exclusion_writer
        try:
            for idx, doc in enumerate(data or ()):
                self.stat_update(StatHints.total)
                if idx not in todo:
                    self.stat_update(StatHints.forwarded)
                    yield doc
                    continue
                reason, root = todo[idx]
                self.stat_update(StatHints.dropped)
                doc.metadata["removed_by"] = REASONS[reason]
                doc.metadata["duplicate_of"] = f"{self.paths[root >> 32]}:{root & 0xFFFFFFFF}"
                if writer is not None:
                    writer.write(doc, rank)
        finally:
            if writer is not None:
                writer.close()
