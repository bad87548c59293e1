"""The cleaning pipeline as a list of datatrove stages (pipelines with a task count).

Each stage is run by any datatrove executor (local, Slurm, Ray); a stage starts when the one before
it has finished. With N = ``tasks``, b = ``minhash.num_buckets``, k = ``minhash.workers_per_bucket``:

=====================  =========  =======================================================
stage                  tasks      steps
=====================  =========  =======================================================
boilerplate_count      N          RecordReader -> BoilerplateLineCounter
boilerplate_merge      N          BoilerplateLineMerge (one hash partition per task)
filter                 N          RecordReader -> BoilerplateLinesFilter -> ScriptLanguageFilter
                                  -> ThaiQualityFilter -> Gopher/FineWeb filters per language
                                  -> IntermediateWriter
minhash_signature      N          IntermediateReader -> InputOrderMinhashSignature
minhash_buckets        (b+1)·k    MinhashDedupBuckets (datatrove's; bucket b = exact text)
minhash_cluster        1          InputOrderMinhashCluster
write                  N          IntermediateReader -> InputOrderMinhashFilter
                                  -> ThaiPIIFormatter -> KeptWriter [-> MegatronDocumentWriter]
finalize               1          Finalize (stats.json, removed/, the merged .bin/.idx)
=====================  =========  =======================================================

Every removal goes to a ``RemovedWriter`` of its own (``OUT/work/removed/NN_stage/``), as
FineWeb-2 gives each filter its own exclusion writer; ``finalize`` joins them per task.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from dataclasses import dataclass
from typing import Callable

from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
from datatrove.pipeline.filters import FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import TextNormConfig

from megatron_th.data.clean.boilerplate import BoilerplateLineCounter, BoilerplateLineMerge, BoilerplateLinesFilter
from megatron_th.data.clean.dedup import InputOrderMinhashCluster, InputOrderMinhashFilter, InputOrderMinhashSignature
from megatron_th.data.clean.filters import LanguageRoutedFilter, ScriptLanguageFilter, ThaiQualityFilter
from megatron_th.data.clean.finalize import Finalize
from megatron_th.data.clean.megatron_writer import MegatronDocumentWriter
from megatron_th.data.clean.pii import ThaiPIIFormatter
from megatron_th.data.clean.records import (IntermediateReader, IntermediateWriter, KeptWriter, RecordReader,
                                            RemovedWriter)
from megatron_th.data.clean.tokenizers import CharTokenizer, LatinWordTokenizer, ThaiWordTokenizer

_FILTERS = {"gopher_repetition": GopherRepetitionFilter, "fineweb_quality": FineWebQualityFilter,
            "gopher_quality": GopherQualityFilter}
_TEXT_NORM = {f.name for f in dataclasses.fields(TextNormConfig)}


@dataclass
class Stage:
    """One datatrove pipeline: ``name`` (also its logging folder ``OUT/logs/NN_name``), its steps,
    its task count, and the files its readers go through (their total size, taken when the stage
    starts, is the progress bar's length; none: no bar)."""
    name: str
    pipeline: list
    tasks: int
    progress_files: Callable[[], list] | None = None

    @property
    def progress_bytes(self) -> int:
        return sum(os.path.getsize(p) for p in self.progress_files()) if self.progress_files else 0


@dataclass
class Plan:
    """Everything that decides the output (the run's fingerprint, ``OUT/work/run.json``)."""
    paths: list
    output_dir: str
    config: dict
    tasks: int
    text_key: str = "text"
    tokenizer_model: str | None = None
    output_prefix: str | None = None
    append_eod: bool = False
    show_errors: int = 5

    def work(self, *parts: str) -> str:
        return os.path.join(self.output_dir, "work", *parts)

    def logs(self, index: int, name: str) -> str:
        return os.path.join(self.output_dir, "logs", f"{index:02d}_{name}")


def minhash_config(cfg: dict) -> MinhashConfig:
    """datatrove's MinhashConfig from the ``minhash`` section."""
    return MinhashConfig(
        n_grams=cfg["n_grams"], num_buckets=cfg["num_buckets"], hashes_per_bucket=cfg["hashes_per_bucket"],
        seed=cfg["seed"], norm_config=TextNormConfig(**{k: v for k, v in cfg.items() if k in _TEXT_NORM}),
        hash_config=HashConfig(precision=cfg["precision"], hash_fc=cfg["hash_fc"]))


def shingle_tokenizer(cfg: dict):
    return CharTokenizer() if cfg["shingle"] == "char" else ThaiWordTokenizer()


class _Removed:
    """Numbered RemovedWriters, one folder per removing step, in pipeline order."""

    def __init__(self, plan: Plan):
        self.plan, self.n = plan, 0

    def __call__(self, stage: str) -> RemovedWriter:
        self.n += 1
        return RemovedWriter(self.plan.work("removed", f"{self.n:02d}_{stage}"), stage, self.plan.text_key)


def filter_steps(plan: Plan, removed: _Removed) -> list:
    """The per-document steps of the ``filter`` stage, after the reader."""
    cfg = plan.config
    bp = cfg["boilerplate"]
    steps = [
        BoilerplateLinesFilter(plan.work("boilerplate", "lines"), bp["patterns"], bp["max_line_chars"],
                               bp["min_letters_left"], exclusion_writer=removed("boilerplate")),
        ScriptLanguageFilter(**cfg["language_routing"], exclusion_writer=removed("script_language")),
        ThaiQualityFilter(**cfg["thai_quality"], exclusion_writer=removed("thai_quality")),
    ]
    for lang, prefix, tokenizer in (("th", "thai", ThaiWordTokenizer()), ("en", "english", LatinWordTokenizer())):
        for kind, cls in _FILTERS.items():
            inner = cls(**cfg[f"{prefix}_{kind}"], language=tokenizer)
            steps.append(LanguageRoutedFilter(inner, lang, exclusion_writer=removed(f"{kind}_{lang}")))
    return steps


def build_stages(plan: Plan) -> list[Stage]:
    """The stages of a run, in order (see the module docstring)."""
    n, cfg = plan.tasks, plan.config
    mh = minhash_config(cfg["minhash"])
    b, k = mh.num_buckets, cfg["minhash"]["workers_per_bucket"]
    removed = _Removed(plan)
    names = ["boilerplate_count", "boilerplate_merge", "filter", "minhash_signature", "minhash_buckets",
             "minhash_cluster", "write", "finalize"]
    progress = {name: plan.logs(i + 1, name) + "/progress" for i, name in enumerate(names)}

    def inputs():
        return plan.paths

    def filtered():
        return glob.glob(os.path.join(plan.work("filtered"), "*.jsonl.gz"))

    def reader(stage, **kw):
        return RecordReader(plan.paths, plan.text_key, progress_dir=progress[stage], show_errors=plan.show_errors, **kw)

    stages = [
        Stage("boilerplate_count", [reader("boilerplate_count"), BoilerplateLineCounter(
            plan.work("boilerplate", "counts"), n, cfg["boilerplate"]["max_line_chars"])], n, inputs),
        Stage("boilerplate_merge", [BoilerplateLineMerge(
            plan.work("boilerplate", "counts"), plan.work("boilerplate", "lines"), cfg["boilerplate"]["min_docs"])], n),
        Stage("filter", [reader("filter", exclusion_writer=removed("read")), *filter_steps(plan, removed),
                         IntermediateWriter(plan.work("filtered"), plan.text_key)], n, inputs),
        Stage("minhash_signature", [
            IntermediateReader(plan.work("filtered"), progress["minhash_signature"]),
            InputOrderMinhashSignature(plan.work("minhash", "signatures"), mh, shingle_tokenizer(cfg["minhash"]))],
              n, filtered),
        Stage("minhash_buckets", [MinhashDedupBuckets(
            plan.work("minhash", "signatures"), plan.work("minhash", "buckets"),
            config=dataclasses.replace(mh, num_buckets=b + 1))], (b + 1) * k),
        Stage("minhash_cluster", [InputOrderMinhashCluster(
            plan.work("minhash", "buckets"), plan.work("minhash", "signatures"), plan.work("minhash", "remove"),
            exact_bucket=b, min_jaccard=cfg["minhash"]["min_estimated_jaccard"])], 1),
    ]
    write = [IntermediateReader(plan.work("filtered"), progress["write"]),
             InputOrderMinhashFilter(plan.work("minhash", "remove"), plan.paths, exclusion_writer=removed("dedup")),
             ThaiPIIFormatter(**cfg["pii"]),
             KeptWriter(os.path.join(plan.output_dir, "kept"), plan.text_key)]
    if plan.tokenizer_model:
        write.append(MegatronDocumentWriter(plan.work("megatron"), plan.tokenizer_model, plan.text_key,
                                            plan.append_eod))
    stages.append(Stage("write", write, n, filtered))
    counted = [plan.logs(names.index(s) + 1, s) for s in ("filter", "write")]
    stages.append(Stage("finalize", [Finalize(plan, counted)], 1))
    return stages
