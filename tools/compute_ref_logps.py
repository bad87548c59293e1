#!/usr/bin/env python
"""Reference log-probabilities for DPO, once, forward only (any TP/PP/DP).

    torchrun --nproc-per-node N tools/compute_ref_logps.py --load SFT_CKPT --data-path PREFIX --output ref.safetensors

See megatron_th.training.ref_logps (--help)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without pip install
from megatron_th.training.ref_logps import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
