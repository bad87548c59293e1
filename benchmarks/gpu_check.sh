#!/usr/bin/env bash
# gpu_check: one command to run first on a fresh GPU node (see docs/cluster.md).
#
#   bash benchmarks/gpu_check.sh [--cpu] [--out gpu_check.json] [--nproc N] [--only TASK,...]
#   make gpu-check
#
# Runs every step under a timeout, prints one line per step
#   STEP <name> PASS|FAIL|SKIP <value> <unit> | <detail>
# writes gpu_check.json (step, status, value, unit, detail, seconds) and exits 1 if any step failed.
# One GPU: environment, attention backends vs fp32, the loss kernel vs F.cross_entropy, bf16 training (~100M), save -> resume, Zero-1 save
# memory, host syncs per step, throughput/MFU (~1B). Two or more GPUs add: TP/SP/PP/interleaved/DP/
# Zero-1 parity with --no-tf32 against one GPU on NCCL, save at one layout -> resume at another, and a
# pipeline deadlock probe with 16 MiB messages. --cpu: the same steps on CPU + gloo, fp32, small sizes
# (the test suite runs it: tests/test_gpu_check.py).
#
# UNVERIFIED: the GPU steps and the expected duration (about 6 minutes on one GPU, 8 on eight) have not
# been run on a GPU yet; only the --cpu path is tested.
#
# This wrapper installs nothing: it uses .venv/bin/python when present (make install), else python3.
# The logic is in benchmarks/gpu_check.py and benchmarks/gpu_check_steps/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="python3"
if [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
fi
exec "$PY" "$ROOT/benchmarks/gpu_check.py" "$@"
