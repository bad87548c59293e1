#!/usr/bin/env python
"""Train a sentencepiece tokenizer with Thai-correct defaults (see --help)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_th.data.train_tokenizer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
