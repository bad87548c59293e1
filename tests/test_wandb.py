"""W&B logging in offline mode: the run's .wandb file holds what metrics.jsonl holds, and a resumed
run continues the same W&B run (its id travels in the checkpoint)."""
import glob
import json
import os
import struct
import sys
import time
import zlib

import numpy as np
import pytest

from megatron_th.config import TrainConfig, parse_config
from megatron_th.data.indexed import IndexedDatasetBuilder
from megatron_th.training import pretrain as pt
from megatron_th.training.checkpoint import CheckpointReader, find_checkpoint
from megatron_th.training.wandb_log import open_wandb


def wandb_records(path):
    """The protobuf Records (wandb.proto.wandb_internal_pb2.Record) of a run's ``run-<id>.wandb``
    file. The installed wandb (0.31) ships no Python reader for it (the old
    wandb/sdk/internal/datastore.py is gone; its Go core writes the file), so this follows the
    format: header ":W&B" + uint16 0xBEE1 + uint8 version, then LevelDB log records in 32 KiB
    blocks (crc32 (IEEE, of type + data) uint32, length uint16, type uint8: 1 full, 2 first,
    3 middle, 4 last; a block tail shorter than 7 bytes is zero padding). Sources: wandb's Go
    store (nexus/pkg/server/store.go: the header, leveldb.CRCAlgoIEEE), leveldb doc/log_format.md."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B" and struct.unpack_from("<H", data, 4)[0] == 0xBEE1, path
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        crc, n, kind = struct.unpack_from("<IHB", data, pos)
        if left < 7 or (kind == 0 and n == 0):
            pos += left
            continue
        if pos + 7 + n > len(data):
            break  # the writer has not finished this record yet
        chunk = data[pos + 7:pos + 7 + n]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: bad record at byte {pos}"
        pos, buf = pos + 7 + n, buf + chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def offline_run(save_dir):
    """(run id, config dict, history rows) of the one offline run under a --wandb-save-dir."""
    files = glob.glob(os.path.join(save_dir, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(files) == 1, files
    # run.finish() can return before wandb's core process has written the file out: wait for its
    # "exit" record (the deadline only guards against a hang)
    deadline = time.monotonic() + 60
    while True:
        recs = wandb_records(files[0])
        if any(r.WhichOneof("record_type") == "exit" for r in recs):
            break
        assert time.monotonic() < deadline, f"{files[0]}: no exit record after 60 s"
        time.sleep(0.05)
    run = [r.run for r in recs if r.WhichOneof("record_type") == "run"][0]
    config = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in run.config.update}
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in recs if r.WhichOneof("record_type") == "history"]
    return run.run_id, config, history


def make_data(d):
    rng = np.random.default_rng(0)
    for name in ("th", "en"):
        with IndexedDatasetBuilder(str(d / name)) as b:
            for _ in range(150):
                b.add_document(np.append(rng.integers(5, 300, size=rng.integers(5, 60)), 2))
    return ["0.5", str(d / "th"), "0.5", str(d / "en")]


def argv(tmp, data, *extra):
    return ["--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
            "--micro-batch-size", "2", "--global-batch-size", "4", "--data-path", *data,
            "--data-cache-path", str(tmp / "cache"), "--split", "90,10,0", "--lr", "3e-3",
            "--lr-warmup-iters", "1", "--lr-decay-iters", "10", "--log-interval", "1", "--eval-interval", "2",
            "--eval-iters", "1", "--peak-tflops", "2", "--num-threads", "1", "--save", str(tmp / "ck"),
            "--wandb-project", "megatron-th-test", "--wandb-exp-name", "tiny", *extra]


def test_wandb_offline_history_and_resume(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb not installed (pip install 'megatron_th[wandb]')")
    for k, v in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                 "WANDB_X_DISABLE_STATS": "true", "WANDB_X_DISABLE_META": "true",  # faster start
                 "WANDB_X_DISABLE_MACHINE_INFO": "true", "WANDB_X_SAVE_REQUIREMENTS": "false",
                 "WANDB_CONFIG_DIR": str(tmp_path / "wbcfg"), "WANDB_CACHE_DIR": str(tmp_path / "wbcache"),
                 "WANDB_DATA_DIR": str(tmp_path / "wbdata")}.items():
        monkeypatch.setenv(k, v)
    calls, real_init = [], wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kw: calls.append(kw) or real_init(**kw))
    data = make_data(tmp_path)
    cfg, _ = parse_config(argv(tmp_path, data, "--train-iters", "2", "--wandb-save-dir", str(tmp_path / "wb1")))
    first = pt.pretrain(cfg, log=lambda m: None)
    run_id = first["state"]["wandb_run_id"]
    assert CheckpointReader(find_checkpoint(str(tmp_path / "ck"))).meta["state"]["wandb_run_id"] == run_id
    # a second directory only so two runs started in the same second cannot share one
    cfg, _ = parse_config(argv(tmp_path, data, "--train-iters", "3", "--load", str(tmp_path / "ck"),
                               "--wandb-save-dir", str(tmp_path / "wb2")))
    second = pt.pretrain(cfg, log=lambda m: None)
    assert second["state"]["wandb_run_id"] == run_id
    assert [(c["id"], c["resume"]) for c in calls] == [(run_id, "allow")] * 2

    recs = [json.loads(line) for line in open(tmp_path / "ck" / "logs" / "metrics.jsonl")]
    train = {r["iteration"]: r for r in recs if "split" not in r}
    valid = {r["iteration"]: r for r in recs if r.get("split") == "valid"}
    assert sorted(train) == [1, 2, 3] and sorted(valid) == [2, 3]
    assert train[3]["consumed_tokens"] == 12 * 32
    rows = []
    for wb_dir, its in (("wb1", [1, 2]), ("wb2", [3])):
        rid, config, history = offline_run(str(tmp_path / wb_dir))
        assert rid == run_id
        assert config["train"]["wandb_project"] == "megatron-th-test" and config["model"]["ffn_hidden_size"] == 128
        assert config["train"]["train_iters"] == its[-1]
        assert sorted({h["iteration"] for h in history}) == its
        rows += history
    for it, r in train.items():
        h = [h for h in rows if h["iteration"] == it and "lm loss" in h]
        assert len(h) == 1, (it, rows)
        h = h[0]
        assert h["lm loss"] == r["lm_loss"] and h["learning-rate"] == r["lr"]
        assert h["grad-norm"] == r["grad_norm"] and h["loss-scale"] == r["loss_scale"]
        assert h["skipped-iterations"] == r["skipped_iters"] == 0
        assert h["tokens-per-sec"] == r["tokens_per_sec"] and h["throughput"] == r["tflops"]
        assert h["mfu"] == r["mfu"] and h["consumed-tokens"] == r["consumed_tokens"]
        assert h["samples vs steps"] == r["consumed_samples"]
    for it, r in valid.items():
        h = [h for h in rows if h["iteration"] == it and "lm loss validation" in h][0]
        assert h["lm loss validation"] == r["lm_loss"] and h["lm loss validation ppl"] == r["ppl"]
        assert {k: h[f"lm loss validation-{k}"] for k in ("th", "en")} == r["per_source"]


def test_wandb_missing_or_flag_alone_is_one_note(monkeypatch):
    notes = []
    t = TrainConfig(wandb_project="p")
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    assert open_wandb(t, {}, None, log=notes.append) is None
    t = TrainConfig(wandb_exp_name="x", wandb_entity="me")
    assert open_wandb(t, {}, None, log=notes.append) is None
    assert notes == ["note: wandb is not installed (pip install 'megatron_th[wandb]'); --wandb-project ignored, "
                     "metrics.jsonl still written",
                     "note: --wandb-exp-name, --wandb-entity given without --wandb-project; W&B logging is off"]
