import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# the suite runs on CPU even on a GPU machine: runs without --distributed-backend (in-process and in
# subprocesses) use gloo and CPU tensors (megatron_th/parallel/groups.py init_distributed)
os.environ.setdefault("MEGATRON_TH_DISTRIBUTED_BACKEND", "gloo")

ASSETS = os.path.join(ROOT, "megatron_th", "assets")
CORPUS = os.path.join(ASSETS, "corpus")
TOKENIZER = os.path.join(ASSETS, "tokenizer", "th_en.model")


@pytest.fixture(scope="session")
def tokenizer_model():
    assert os.path.isfile(TOKENIZER), f"{TOKENIZER} missing (tools/train_tokenizer.py builds it)"
    return TOKENIZER


@pytest.fixture(scope="session")
def corpus_dir():
    return CORPUS
