#!/usr/bin/env python
"""Append the pieces of a (Thai) sentencepiece model to a base model, keeping every base id (see --help)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_th.data.extend_tokenizer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
