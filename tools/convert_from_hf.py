#!/usr/bin/env python
"""Import a Hugging Face model (Llama 1/2/3.x, Mistral, Qwen2/2.5, Qwen3, GPT-2) as a megatron_th checkpoint.

Installed as ``megatron-th-convert-from-hf``; see megatron_th.cli.convert_from_hf (--help)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without pip install
from megatron_th.cli.convert_from_hf import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
