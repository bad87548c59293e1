#!/usr/bin/env python
"""Export a megatron_th checkpoint as a Hugging Face model directory.

Installed as ``megatron-th-convert-to-hf``; see megatron_th.cli.convert_to_hf (--help)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without pip install
from megatron_th.cli.convert_to_hf import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
