#!/usr/bin/env python
"""Estimate a pretraining run before renting GPUs.

Installed as ``megatron-th-estimate``; see megatron_th.cli.estimate (--help)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without pip install
from megatron_th.cli.estimate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
