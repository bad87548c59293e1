"""--ema-decay / --ema-start-iter / --eval-ema: the same EMA at every layout, beta = 0 gives the weights,
--eval-ema logs valid_ema without changing training, convert_to_hf --ema exports it, the estimator
counts it. The layout runs are tests/optim_runs.py's (resume bitwise: tests/test_optimizers.py)."""
import json
import os

import pytest
import torch

from megatron_th.training.checkpoint import CheckpointReader, find_checkpoint
from tests import optim_runs as R
from tests.test_training import data_prefix, run, tiny_argv  # noqa: F401 (data_prefix: fixture)


@pytest.fixture(scope="module")
def runs():
    return R.runs()


def _ema(ck: str) -> dict:
    r = CheckpointReader(find_checkpoint(ck))
    return {n[len("optim.ema."):]: r.read(n) for n in r.tensors if n.startswith("optim.ema.")}


@pytest.mark.parametrize("opt", sorted(R.OPTIMIZERS))
def test_ema_is_the_same_at_every_layout(runs, opt):
    """After 10 steps the EMA saved by DP=2 + Zero-1 (SGD: flat ranges; Adafactor, Muon: whole
    parameters), TP=2 and PP=2 equals the serial one, tensor by tensor (<= 1e-6 relative)."""
    serial = _ema(os.path.join(runs["root"], f"{opt}_serial"))
    weights = dict(runs["serial"][opt]["result"]["model"].named_parameters())
    assert serial.keys() == weights.keys()
    # an average of weights that moved, not the weights
    assert max(((serial[n] - weights[n]).norm() / weights[n].norm()).item() for n in serial) > 1e-3
    for lay in R.LAYOUTS:
        got = _ema(os.path.join(runs["root"], f"{opt}_{lay}"))
        assert got.keys() == serial.keys(), lay
        for n, t in serial.items():
            rel = ((got[n] - t).norm() / t.norm()).item()
            assert rel <= 1e-6, (lay, n, rel)


def test_beta_zero_is_the_weights_and_eval_ema_leaves_training_alone(data_prefix, tmp_path):  # noqa: F811
    """beta = 0: the EMA is the weights bitwise, and valid_ema equals valid. beta = 0.5: valid_ema is
    another number, and with or without --eval-ema (or an EMA) training is bitwise the same."""
    common = ["--train-iters", "4", "--eval-interval", "2", "--eval-iters", "1", "--bf16"]
    plain = run(tiny_argv(data_prefix, tmp_path, *common))
    logs = {}
    outs = {}
    for beta in ("0", "0.5"):
        ck = tmp_path / f"ck{beta}"
        outs[beta] = run(tiny_argv(data_prefix, tmp_path, *common, "--ema-decay", beta, "--eval-ema",
                                   "--save", str(ck)))
        logs[beta] = [json.loads(line) for line in open(ck / "logs" / "metrics.jsonl") if '"split"' in line]
    for out in outs.values():
        assert out["losses"] == plain["losses"]
        for a, b in zip(out["model"].parameters(), plain["model"].parameters()):
            assert torch.equal(a, b)
    opt = outs["0"]["optimizer"]
    assert all(torch.equal(e, m) for e, m in zip(opt.ema.tensors, opt.masters))
    for beta, recs in logs.items():
        valid = {r["iteration"]: r["lm_loss"] for r in recs if r["split"] == "valid"}
        ema = {r["iteration"]: r["lm_loss"] for r in recs if r["split"] == "valid_ema"}
        assert sorted(valid) == sorted(ema) == [2, 4]
        assert (ema == valid) == (beta == "0"), (beta, valid, ema)
    saved = _ema(str(tmp_path / "ck0.5"))
    assert all(torch.equal(saved[n], e.view_as(saved[n]))
               for n, e in zip([n for n, _ in outs["0.5"]["named_params"]], outs["0.5"]["optimizer"].ema.tensors))


def test_convert_to_hf_exports_the_ema(runs, tmp_path, capsys):
    """convert_to_hf --ema writes the saved EMA (of the serial Muon run), not the weights, and says so
    in its progress line; a checkpoint without an EMA (the averaged one, weights only) is one error line."""
    pytest.importorskip("tokenizers", reason="HF export needs the [hf] extra")
    from megatron_th.cli.convert_to_hf import main
    from megatron_th.convert.hf_files import HFWeights

    ck = os.path.join(runs["root"], "muon_serial")
    capsys.readouterr()
    assert main(["--load", ck, "--output", str(tmp_path / "hf_ema"), "--ema"]) == 0
    assert "exporting the EMA weights (optim.ema.*) of " in capsys.readouterr().out
    hf, emas = HFWeights(str(tmp_path / "hf_ema")), _ema(ck)
    weights = CheckpointReader(find_checkpoint(ck))
    for hf_name, ours in (("model.norm.weight", "final_norm.weight"),
                          ("model.layers.1.mlp.down_proj.weight", "layers.1.mlp.linear_fc2.weight")):
        assert torch.equal(hf.get(hf_name), emas[ours]) and not torch.equal(hf.get(hf_name), weights.read(ours))
    assert main(["--load", os.path.join(runs["root"], "averaged"), "--output", str(tmp_path / "none"), "--ema"]) == 1


def test_estimator_counts_the_ema():
    """4 B/param, / DP under Zero-1 (estimate/footprint.py through training/optimizers/state_bytes.py)."""
    from megatron_th.config import parse_config
    from megatron_th.estimate import estimate

    base = ["--num-layers", "4", "--hidden-size", "256", "--num-attention-heads", "8", "--seq-length", "256",
            "--swiglu", "--normalization", "RMSNorm", "--position-embedding-type", "rope", "--bf16"]

    def optimizer_bytes(*extra, gpus=1):
        e = estimate(parse_config(base + list(extra))[0], gpus=gpus, vocab_size=8000, advise=False)
        return e["memory"]["ranks"][0]["optimizer"], e["params"]["total"]

    adam, n = optimizer_bytes()
    with_ema, _ = optimizer_bytes("--ema-decay", "0.99")
    assert with_ema - adam == 4 * n
    zero, _ = optimizer_bytes("--use-distributed-optimizer", gpus=4)
    zero_ema, _ = optimizer_bytes("--use-distributed-optimizer", "--ema-decay", "0.99", gpus=4)
    assert zero_ema - zero == pytest.approx(4 * n / 4, rel=1e-3)  # bucket padding aside


def test_bad_flags_are_config_errors():
    import re

    from megatron_th.config import ConfigError, finalize, parse_config

    for argv, msg in ((["--eval-ema"], "--eval-ema needs --ema-decay"),
                      (["--ema-decay", "1"], "--ema-decay 1.0 must be in [0, 1)"),
                      (["--ema-decay", "0.9", "--ema-start-iter", "-1"], "--ema-start-iter must be >= 0"),
                      (["--optimizer", "muon", "--muon-num-ns-steps", "0"], "--muon-num-ns-steps 0 must be >= 1"),
                      (["--ema-start-iter", "100"], "--ema-start-iter needs --ema-decay"),
                      (["--optimizer", "sgd", "--sgd-momentum", "1"], "--sgd-momentum 1.0 must be in [0, 1)"),
                      (["--optimizer", "muon", "--muon-extra-scale-factor", "0"],
                       "--muon-extra-scale-factor 0.0 must be > 0")):
        with pytest.raises(ConfigError, match=re.escape(msg)):
            finalize(parse_config(argv)[0])


def test_plot_logs_draws_valid_ema_as_its_own_line(tmp_path):
    """tools/plot_logs.py: valid and valid_ema records (any split) are separate lines of the loss
    panel, each with only its own split's points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tools.plot_logs import main, read_metrics

    run = tmp_path / "run"
    run.mkdir()
    recs = [{"iteration": i, "lm_loss": 5.0 - i, "lr": 1e-3, "tokens_per_sec": 100.0} for i in (1, 2, 3, 4)]
    recs += [{"split": "valid", "iteration": 2, "lm_loss": 4.5}, {"split": "valid_ema", "iteration": 2, "lm_loss": 4.7},
             {"split": "valid", "iteration": 4, "lm_loss": 3.5}, {"split": "valid_ema", "iteration": 4, "lm_loss": 3.9}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    train, evals = read_metrics(str(run / "metrics.jsonl"))
    assert len(train) == 4 and sorted(evals) == ["valid", "valid_ema"]
    plt.close("all")
    assert main([str(run), "--output", str(tmp_path / "c.png")]) == 0
    lines = {ln.get_label(): list(ln.get_ydata()) for ln in plt.gcf().axes[0].lines}
    plt.close("all")
    assert lines == {"run train": [4.0, 3.0, 2.0, 1.0], "run valid": [4.5, 3.5], "run valid_ema": [4.7, 3.9]}
