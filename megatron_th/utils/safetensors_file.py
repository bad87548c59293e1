"""Writing a safetensors file with the permissions of any other file this process writes.

``safetensors.torch.save_file`` leaves its file readable by the owner only (mode 0600), while the
JSON, tokenizer and index files written beside it by ``open()`` get 0666 minus the umask (0644
under the usual 022). On a cluster that hides a checkpoint's or an exported model's weights from
the rest of the team (and from a job running as a service account); ``save_safetensors`` gives the
file the mode ``open()`` would have.
"""
from __future__ import annotations

import os

from safetensors.torch import save_file


def _umask() -> int:
    """The process umask: from /proc/self/status (Linux 4.7+, no side effect), else by setting and
    restoring it (not thread-safe, so done once, at import)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def save_safetensors(tensors: dict, path: str, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file(tensors, path, metadata)``, then the file's mode set to
    0666 & ~umask (as ``open(path, "w")`` would create it). ``tensors``: name -> contiguous tensor."""
    save_file(tensors, path, metadata=metadata)
    os.chmod(path, _FILE_MODE)
