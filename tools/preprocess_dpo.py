#!/usr/bin/env python
"""Tokenize preference pairs (prompt, chosen, rejected; jsonl / jsonl.gz / parquet) into
record-aligned PREFIX_{chosen,rejected}_{tokens,loss_mask} .bin/.idx datasets for DPO; see
megatron_th.data.preprocess_dpo (--help)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without pip install
from megatron_th.data.preprocess_dpo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
