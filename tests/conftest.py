import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

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
