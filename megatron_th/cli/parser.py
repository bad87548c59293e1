"""The argument parser every command of the project uses: argparse's, with the project's rule for a
bad flag (one line on stderr, ``error: <what argparse found>``, exit status 2, no usage block and no
traceback). ``--help`` is argparse's, unchanged."""
from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose ``error()`` prints ``error: <message>`` on one line and
    exits with status 2 (argparse's own status), instead of the usage block and
    ``prog: error: ...``. argparse's message already names the flag (``argument --optimizer:
    invalid choice: 'adamw' (choose from ...)``). Raises SystemExit(2)."""

    def error(self, message: str):
        print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
        sys.exit(2)
