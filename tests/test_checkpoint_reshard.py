"""Checkpoints are topology-free: save under (TP, PP, DP) = (2, 2, 2) with Zero-1, load under other
layouts and optimizer kinds, and continue exactly like an uninterrupted single-process run."""
import numpy as np
import pytest
import torch

from tests import dist as D
from tests.test_tensor_parallel import _data, argv

BASE = ["--num-layers", "4", "--global-batch-size", "8", "--micro-batch-size", "2", "--lr-decay-iters", "20"]
SAVE_LAYOUT = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
               "--use-distributed-optimizer", "--sequence-parallel"]
TARGETS = {  # name -> (world, flags)
    "1x1x1": (1, []),
    "1x1x4_zero": (4, ["--use-distributed-optimizer"]),
    "2x1x2": (2 * 2, ["--tensor-model-parallel-size", "2"]),
    "1x2x1": (2, ["--pipeline-model-parallel-size", "2"]),
    "4x1x1": (4, ["--tensor-model-parallel-size", "4"]),
    "2x2x2_zero": (8, SAVE_LAYOUT),
}


def _train(args):
    from megatron_th.config import parse_config
    from megatron_th.training.pretrain import pretrain

    cfg, _ = parse_config(args)
    return pretrain(cfg, log=lambda *a: None)["losses"]


def _save_body(rank, world, prefix, cache, ck):
    # async saves at 2 and 4 (each committed at the next save point), a synchronous one at the end
    return _train(argv(prefix, cache, *BASE, *SAVE_LAYOUT, "--train-iters", "5", "--save", ck,
                       "--save-interval", "2", "--async-save"))


def _resume_body(rank, world, prefix, cache, ck, targets):
    out = {}
    for name, (w, flags) in targets.items():
        if w == world:
            out[name] = _train(argv(prefix, cache, *BASE, *flags, "--train-iters", "10", "--load", ck))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reshard")
    prefix, cache, ck = _data(tmp), str(tmp / "cache"), str(tmp / "ck")
    full = _train(argv(prefix, cache, *BASE, "--train-iters", "10"))
    saved = D.run(_save_body, 8, prefix, cache, ck, timeout=300)[0]
    resumed = {}
    for world in sorted({w for w, _ in TARGETS.values()}):
        if world == 1:
            resumed.update(_resume_body(0, 1, prefix, cache, ck, TARGETS))
        else:
            for res in D.run(_resume_body, world, prefix, cache, ck, TARGETS, timeout=300):
                for k, v in res.items():
                    resumed.setdefault(k, v)
    return full, saved, resumed, ck


def test_saved_run_matches_serial(runs):
    full, saved, _, _ = runs
    np.testing.assert_allclose(saved, full[:5], rtol=1e-5)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_resume_at_any_layout_continues_the_serial_run(runs, target):
    full, _, resumed, _ = runs
    assert len(resumed[target]) == 5
    np.testing.assert_allclose(resumed[target], full[5:], rtol=1e-5)


def test_checkpoint_info_reports_and_verifies_coverage(runs, tmp_path):
    import json
    import os
    import shutil
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ck = runs[3]
    out = subprocess.run([sys.executable, "tools/checkpoint_info.py", ck], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "iteration        5" in out.stdout and "TP 2 x PP 2 x DP 2" in out.stdout
    assert "40 samples, 1,280 tokens" in out.stdout and "exactly covered" in out.stdout
    bad = tmp_path / "bad"
    shutil.copytree(os.path.join(ck, "iter_0000005"), bad)
    meta = json.loads((bad / "metadata.json").read_text())
    name = "layers.0.self_attention.linear_qkv.weight"
    assert len(meta["tensors"][name]["slices"]) == 2  # one per TP rank
    meta["tensors"][name]["slices"].pop()
    (bad / "metadata.json").write_text(json.dumps(meta))
    out = subprocess.run([sys.executable, "tools/checkpoint_info.py", str(bad)], cwd=root, capture_output=True, text=True)
    assert out.returncode == 1 and f"error: {name}: slices cover" in out.stderr


def test_hf_export_is_the_same_from_any_layout(runs, tmp_path):
    """Export of the (2,2,2) Zero-1 checkpoint == export of the same model saved at (1,1,1), bitwise."""
    pytest.importorskip("tokenizers", reason="HF export needs the [hf] extra")
    from megatron_th.convert.hf_files import HFWeights
    from megatron_th.convert.to_hf import export_to_hf
    from megatron_th.inference import load_for_inference
    from megatron_th.training.resume import open_checkpoint, save_weights_only, tokenizer_spec

    ck = runs[3]
    model, _, cfg = load_for_inference(ck)
    single = str(tmp_path / "single")
    save_weights_only(single, 5, list(model.state_dict().items()), cfg.to_dict(), tokenizer_spec(open_checkpoint(ck)))
    a, b = str(tmp_path / "hf_222"), str(tmp_path / "hf_111")
    export_to_hf(ck, a, log=lambda *x: None)
    export_to_hf(single, b, log=lambda *x: None)
    wa, wb = HFWeights(a), HFWeights(b)
    assert sorted(wa.names()) == sorted(wb.names()) and len(wa.names()) > 10
    assert all(torch.equal(wa.get(n), wb.get(n)) for n in wa.names())
    assert open(f"{a}/config.json").read() == open(f"{b}/config.json").read()
