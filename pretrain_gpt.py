#!/usr/bin/env python
"""Pretrain a GPT model: `torchrun --nproc-per-node N pretrain_gpt.py --config FILE.yaml [flags]`.

Flags are Megatron-LM's (see --help); a flag overrides the YAML file.
"""
import sys

from megatron_th.training.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
