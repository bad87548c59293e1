"""The embedded Thai+English corpus and tokenizer: the default data of every command.

``embedded_data_path()`` tokenizes each source file of ``megatron_th/assets/corpus`` (not the
deliberately dirty one) into ``.bin/.idx`` on first use, under a file lock so that many ranks
starting at once build it once, in a cache directory keyed by the corpus and tokenizer contents.
"""
from __future__ import annotations

import argparse
import fcntl
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


def embedded_data_path(root: str | None = None, tokenizer: str = DEFAULT_TOKENIZER, log=print) -> list[str]:
    """Prefixes of the tokenized embedded corpus (built once), one per source."""
    from megatron_th.data.indexed import dataset_exists
    from megatron_th.data.preprocess import build_parser, run

    h = hashlib.sha1()
    for f in corpus_files() + [tokenizer]:
        with open(f, "rb") as fh:
            h.update(fh.read())
    out_dir = os.path.join(root or cache_root(), "embedded", h.hexdigest()[:12])
    os.makedirs(out_dir, exist_ok=True)
    prefixes = [os.path.join(out_dir, s) for s in SOURCES]
    with open(os.path.join(out_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for src, prefix in zip(corpus_files(), prefixes):
            if not dataset_exists(prefix + "_text_document"):
                log(f"building {prefix}_text_document from {os.path.basename(src)}")
                args = build_parser().parse_args(["--input", src, "--tokenizer-model", tokenizer,
                                                  "--output-prefix", prefix, "--append-eod", "--quiet"])
                run(args, log=lambda m: None)
        fcntl.flock(lock, fcntl.LOCK_UN)
    return [p + "_text_document" for p in prefixes]


if __name__ == "__main__":  # python -m megatron_th.data.embedded: build and print the prefixes
    argparse.ArgumentParser(description=__doc__).parse_args()
    for p in embedded_data_path():
        print(p)
