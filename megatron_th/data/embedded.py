"""The embedded Thai+English corpus and tokenizer: the default data of every command.

``embedded_data_path()`` tokenizes each source file of ``megatron_th/assets/corpus`` (not the
deliberately dirty one) into ``.bin/.idx`` on first use, once (rank 0 builds, the other ranks
wait), in a cache directory keyed by the corpus and tokenizer contents.
"""
from __future__ import annotations

import hashlib
import os

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
CORPUS_DIR = os.path.join(ASSETS, "corpus")
DEFAULT_TOKENIZER = os.path.join(ASSETS, "tokenizer", "th_en.model")
SOURCES = ("th_news", "th_wiki", "th_story", "en_misc")


def corpus_files() -> list[str]:
    files = [os.path.join(CORPUS_DIR, f"{s}.jsonl") for s in SOURCES]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: embedded corpus file missing (broken install?)")
    return files


def cache_root() -> str:
    return os.environ.get("MEGATRON_TH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "megatron_th"))


def embedded_data_path(root: str | None = None, tokenizer: str = DEFAULT_TOKENIZER, log=print,
                       group=None) -> list[str]:
    """Prefixes of the tokenized embedded corpus (built once), one per source.

    Under torch.distributed pass ``group`` (parallel/host_sync.host_group()): rank 0 hashes the
    sources and builds, the others wait and then read; a node that cannot see the cache (a
    node-local home directory) builds its own (host_sync.one_rank_builds). No file locks: cluster
    filesystems may not have them. Preprocessing writes atomically, so two independent runs
    building at once only duplicate work."""
    from megatron_th.data.indexed import dataset_exists
    from megatron_th.data.preprocess import build_parser, run
    from megatron_th.parallel.host_sync import one_rank_builds

    def plan():
        h = hashlib.sha1()
        for f in corpus_files() + [tokenizer]:
            with open(f, "rb") as fh:
                h.update(fh.read())
        return os.path.join(root or cache_root(), "embedded", h.hexdigest()[:12])

    def exists(out_dir):
        return all(dataset_exists(os.path.join(out_dir, s) + "_text_document") for s in SOURCES)

    def build(out_dir):
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            from megatron_th.config import ConfigError
            raise ConfigError(f"cannot build the embedded corpus in {out_dir} ({e.strerror or e}): set "
                              f"MEGATRON_TH_CACHE to a writable directory, or give --data-path") from None
        for src, s in zip(corpus_files(), SOURCES):
            prefix = os.path.join(out_dir, s)
            if not dataset_exists(prefix + "_text_document"):
                log(f"building {prefix}_text_document from {os.path.basename(src)}")
                args = build_parser().parse_args(["--input", src, "--tokenizer-model", tokenizer,
                                                  "--output-prefix", prefix, "--append-eod", "--quiet"])
                run(args, log=lambda m: None)

    from megatron_th.config import ConfigError

    out_dir = one_rank_builds(plan, exists, build, group, shared=(ConfigError, FileNotFoundError))
    return [os.path.join(out_dir, s) + "_text_document" for s in SOURCES]


if __name__ == "__main__":  # python -m megatron_th.data.embedded: build and print the prefixes
    from megatron_th.cli.parser import ArgumentParser

    ArgumentParser(description=__doc__).parse_args()
    for p in embedded_data_path():
        print(p)
