"""The reference model's completion log-probabilities for DPO, computed once, forward only.

``compute_ref_logps(argv)`` runs the training stack (any TP/PP/DP, which may differ from the DPO
run's) with ``--skip-train --full-validation --finetune --use-checkpoint-args`` over every pair of
``--data-path`` (``--split 0,100,0``), with the DPO task in reference mode: each pair's summed
log-probability of its chosen and rejected completion, and their token counts. Written atomically:

- ``FILE`` (safetensors): float64 ``chosen_logps``, ``rejected_logps``, ``chosen_tokens``,
  ``rejected_tokens``, each [pairs], indexed by pair (record) id;
- ``FILE.json``: the fingerprint the DPO run checks (tasks/dpo.py read_ref_logps): the data's
  ``.idx`` hashes and the checkpoint (path, iteration, metadata digest), plus the layout and time.
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch

from megatron_th.config import ConfigError, parse_config


def _extra(p) -> None:
    p.prog = "compute_ref_logps.py"
    p.description = __doc__.split("\n\n")[0] + " Takes pretrain_gpt.py's flags (layout, batch sizes)."
    p.add_argument("--output", required=True, help="Where to write the table (FILE and FILE.json).")


def write_table(path: str, rows: torch.Tensor, fingerprint: dict) -> int:
    """rows [n, 6] (chosen, rejected logps, chosen, rejected tokens, pair id, real) -> FILE + FILE.json;
    returns the number of pairs. Raises RuntimeError when some pair is missing or repeated."""
    from megatron_th.utils.safetensors_file import save_safetensors

    rows = rows[rows[:, 5] > 0]
    ids = rows[:, 4].long()
    n = int(fingerprint["pairs"])
    if len(ids) != n or not torch.equal(torch.sort(ids).values, torch.arange(n)):
        raise RuntimeError(f"reference pass covered {len(ids)} rows for {n} pairs (ids not each once)")
    order = torch.argsort(ids)
    table = {k: rows[order, j].contiguous() for j, k in
             enumerate(("chosen_logps", "rejected_logps", "chosen_tokens", "rejected_tokens"))}
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    save_safetensors(table, path + ".tmp")
    with open(path + ".json.tmp", "w") as f:
        json.dump(fingerprint, f, indent=2)
    os.replace(path + ".tmp", path)
    os.replace(path + ".json.tmp", path + ".json")
    return n


def compute_ref_logps(argv=None, log=print) -> dict | None:
    """Runs the reference pass (see the module docstring); returns the fingerprint on the rank that
    wrote the file, None on the others. Raises ConfigError for bad flags or data."""
    from megatron_th.data.dpo_dataset import open_dpo_data
    from megatron_th.training.pretrain import pretrain
    from megatron_th.training.tasks.dpo import DPOTask, checkpoint_fingerprint, data_fingerprint

    cfg, ns = parse_config(argv, extra=_extra)
    t, d = cfg.train, cfg.data
    if not t.load:
        raise ConfigError("--load REF: the reference checkpoint (the SFT model DPO starts from)")
    if len(d.data_path) != 1:
        raise ConfigError("--data-path PREFIX: one DPO prefix (tools/preprocess_dpo.py output)")
    t.dpo, t.skip_train, t.full_validation, t.finetune, t.use_checkpoint_args = True, True, True, True, True
    t.save, t.eval_interval = None, None
    d.split = "0,100,0"
    prefix = d.data_path[0]
    pairs = len(open_dpo_data(prefix)["chosen"][0])
    task = DPOTask(cfg, reference=True)
    task.keep_rows = True
    out = pretrain(cfg, log=log, task=task)
    ev, g = out.get("eval"), out["groups"]
    if ev is None or "rows" not in ev or g.tp_rank != 0 or g.dp_rank != 0:
        return None  # one rank of the last stage writes
    meta = task.load_meta or {}
    fp = {"data": data_fingerprint(prefix), "data_path": os.path.abspath(prefix), "pairs": pairs,
          "checkpoint": {"path": os.path.abspath(t.load), "iteration": meta.get("iteration"),
                         "digest": checkpoint_fingerprint(meta)},
          "layout": {"tp": cfg.parallel.tensor_model_parallel_size, "pp": cfg.parallel.pipeline_model_parallel_size},
          "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    n = write_table(ns.output, ev["rows"], fp)
    log(f"wrote {ns.output}: reference log-probabilities of {n} pairs (+ {ns.output}.json)")
    return fp


def main(argv=None) -> int:
    from megatron_th.parallel.groups import shutdown_distributed
    from megatron_th.training.checkpoint import CheckpointError

    clean = False
    try:
        compute_ref_logps(argv)
        clean = True
        return 0
    except (ConfigError, FileNotFoundError, CheckpointError) as e:
        clean = True
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    finally:
        shutdown_distributed(clean)
