#!/usr/bin/env python
"""Average the weights of several saved iterations into one weights-only checkpoint.

See megatron_th.cli.average_checkpoints (--help) and docs/optimizers.md."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without pip install
from megatron_th.cli.average_checkpoints import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
