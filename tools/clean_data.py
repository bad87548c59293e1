#!/usr/bin/env python
"""Clean a raw Thai+English crawl into kept/removed jsonl.gz and, optionally, Megatron .bin/.idx.

Needs the ``[data]`` extra (datatrove, pythainlp); see megatron_th.data.clean.cli (--help) and
docs/data.md."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout without pip install
from megatron_th.data.clean.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
