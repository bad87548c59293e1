#!/usr/bin/env python
"""Render chat / instruction records (jsonl / jsonl.gz / parquet) into record-aligned
PREFIX_tokens and PREFIX_loss_mask .bin/.idx datasets for SFT; see megatron_th.data.preprocess_sft
(--help)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without pip install
from megatron_th.data.preprocess_sft import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
