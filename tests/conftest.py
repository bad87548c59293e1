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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module's tests, restored after: tiny models' matmuls run ~3x
    faster than with two threads on the shared 2-core CI machine. Use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
