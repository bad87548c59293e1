#!/usr/bin/env python
"""Tokenize jsonl / jsonl.gz / parquet into Megatron-compatible .bin/.idx.

Installed as ``megatron-th-preprocess``; see megatron_th.data.preprocess (--help)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without pip install
from megatron_th.data.preprocess import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
