"""tools/average_checkpoints.py: the weighted mean of the inputs (from their fp32 masters), a
checkpoint averaged with itself unchanged, one-line errors, and the output exported and loaded at
TP=2 (tests/optim_runs.py evaluates it there)."""
import os

import pytest
import torch

from megatron_th.training.checkpoint import CheckpointReader, find_checkpoint
from tests import optim_runs as R
from tests.test_training import data_prefix, run, tiny_argv  # noqa: F401 (data_prefix: fixture)


def _tool(capsys, *args) -> tuple[int, str]:
    """tools/average_checkpoints.py's main in this process: (exit status, stderr)."""
    from megatron_th.cli.average_checkpoints import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def saved(data_prefix, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("avg")
    ck = tmp / "ck"
    run(tiny_argv(data_prefix, tmp, "--train-iters", "3", "--save-interval", "1", "--bf16", "--save", str(ck)))
    return tmp, ck


def _model_names(r):
    return [n for n in r.tensors if not n.startswith(("optim.", "rng."))]


def test_weighted_mean_of_the_masters(saved):
    from megatron_th.training.average import average_checkpoints

    tmp, ck = saved
    out = tmp / "avg"
    average_checkpoints(str(ck), [1, 2, 3], str(out), [1, 1, 2], log=lambda *a: None)
    got = CheckpointReader(find_checkpoint(str(out)))
    ins = [CheckpointReader(os.path.join(ck, f"iter_{i:07d}")) for i in (1, 2, 3)]
    assert got.meta["state"]["iteration"] == 3 and got.meta["averaged"]["weights"] == [0.25, 0.25, 0.5]
    names = _model_names(ins[0])
    assert sorted(_model_names(got)) == sorted(names)
    moved = 0
    for n in names:
        want = sum(w * r.read("optim.master." + n).double() for w, r in zip((0.25, 0.25, 0.5), ins))
        master = got.read("optim.master." + n)
        torch.testing.assert_close(master.double(), want, rtol=2 ** -24, atol=0)
        assert got.tensors[n]["dtype"] == "bfloat16" and torch.equal(got.read(n), master.to(torch.bfloat16))
        moved += not torch.equal(master, ins[2].read("optim.master." + n))
    assert moved > len(names) // 2


def test_a_checkpoint_averaged_with_itself_is_unchanged(saved, capsys):
    tmp, ck = saved
    rc, err = _tool(capsys, "--load", ck, "--iterations", "2", "--output", tmp / "self")
    assert rc == 0, err
    got, src = CheckpointReader(find_checkpoint(str(tmp / "self"))), CheckpointReader(os.path.join(ck, "iter_0000002"))
    for n in _model_names(src):
        assert torch.equal(got.read(n), src.read(n)) and torch.equal(got.read("optim.master." + n),
                                                                     src.read("optim.master." + n)), n


def test_bad_input_is_one_error_line(saved, capsys):
    tmp, ck = saved
    for args, msg in ((["--iterations", "1,2,3", "--weights", "1,2"], "--weights has 2 values for 3 --iterations"),
                      (["--iterations", "1,9"], "no checkpoint of iteration 9"),
                      (["--iterations", "1,2", "--weights", "1,-1"], "--weights 1.0,-1.0: need finite values")):
        rc, err = _tool(capsys, "--load", ck, *args, "--output", tmp / "bad")
        assert rc == 1 and err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1, err
    rc, err = _tool(capsys, "--load", ck, "--iterations", "3", "--output", ck)  # never overwrites a checkpoint
    assert rc == 1 and "is the --load directory" in err


def test_refused_outputs_and_inputs(saved, capsys):
    """--output is, or is inside, --load or another checkpoint directory, or a non-empty directory, or
    cannot be made (named as --output); an iteration given twice; a --load that does not exist: one
    error line each, nothing written."""
    tmp, ck = saved
    other = tmp / "other_run"  # another run's checkpoint directory
    (other / "iter_0000007").mkdir(parents=True)
    (other / "iter_0000007" / "metadata.json").write_text("{}")
    full = tmp / "full"
    full.mkdir()
    (full / "notes.txt").write_text("x")
    blocker = tmp / "a_file"
    blocker.write_text("x")
    before = sorted(os.listdir(ck))
    for out, msg in ((ck / "iter_0000002", "is inside the --load directory"),
                     (ck / "avg", "is inside the --load directory"),
                     (other, "is the checkpoint directory"),
                     (other / "avg", "is inside the checkpoint directory"),
                     (other / "iter_0000007", "is the checkpoint directory"),
                     (full, "is not empty (holds notes.txt)"),
                     (blocker / "sub", f"--output {blocker / 'sub'}: cannot create it")):
        rc, err = _tool(capsys, "--load", ck, "--iterations", "2", "--output", out)
        assert rc == 1 and err.startswith(f"error: --output {out}") and msg in err, (out, err)
        assert len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(ck)) == before and not (other / "avg").exists()
    assert sorted(os.listdir(other / "iter_0000007")) == ["metadata.json"]
    for args, msg in ((["--load", ck, "--iterations", "2,3,2"], "--iterations 2,3,2: iteration(s) 2 given more than"),
                      (["--load", tmp / "nonexistent", "--iterations", "2"], "the directory does not exist")):
        rc, err = _tool(capsys, *args, "--output", tmp / "fresh")
        assert rc == 1 and err.startswith("error: ") and msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp / "fresh").exists()


def test_inputs_of_another_precision_are_refused(saved, capsys):
    """A bf16 checkpoint and an fp32 one of the same model: refused, naming both iterations and the
    differing key (else the output would take its dtype from one input and its config from another)."""
    import json
    import shutil

    tmp, ck = saved
    mixed = tmp / "mixed"
    for it in (2, 3):
        shutil.copytree(ck / f"iter_{it:07d}", mixed / f"iter_{it:07d}")
    meta_path = mixed / "iter_0000003" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["optim"]["bf16"] = False  # as an fp32 run's config says
    meta_path.write_text(json.dumps(meta))
    rc, err = _tool(capsys, "--load", mixed, "--iterations", "2,3", "--output", tmp / "mixed_avg")
    assert rc == 1 and "iterations 2 and 3 differ in precision" in err and "optim.bf16 True vs False" in err, err
    for n, e in meta["tensors"].items():  # an fp32 checkpoint's tensors are fp32 too: the dtype check
        if not n.startswith(("optim.", "rng.")):
            e["dtype"] = "float32"
    meta["config"]["optim"]["bf16"] = True
    meta_path.write_text(json.dumps(meta))
    rc, err = _tool(capsys, "--load", mixed, "--iterations", "2,3", "--output", tmp / "mixed_avg")
    assert rc == 1 and "iterations 2 and 3 differ in precision" in err and "bfloat16 vs float32" in err, err
    assert not (tmp / "mixed_avg").exists()


def test_resuming_from_an_average_needs_finetune(saved, data_prefix, capsys):  # noqa: F811
    """An averaged checkpoint holds weights only (no optimizer state, consumed_samples 0): --load
    without --finetune is one error line telling to add --finetune, before anything is built."""
    from megatron_th.training.pretrain import main

    tmp, ck = saved
    rc, err = _tool(capsys, "--load", ck, "--iterations", "1,3", "--output", tmp / "avg13")
    assert rc == 0, err
    assert main(tiny_argv(data_prefix, tmp, "--train-iters", "5", "--load", str(tmp / "avg13"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --load ") and "add --finetune" in err and len(err.strip().splitlines()) == 1, err


def test_averaged_checkpoint_loads_at_tp2_and_exports(saved):
    runs = R.runs()
    assert runs["averaged_tp2"][0] == pytest.approx(runs["averaged_serial"], rel=1e-5)
    pytest.importorskip("tokenizers", reason="HF export needs the [hf] extra")
    from megatron_th.convert.hf_files import HFWeights
    from megatron_th.convert.to_hf import export_to_hf

    tmp, _ = saved
    avg = os.path.join(runs["root"], "averaged")
    export_to_hf(avg, str(tmp / "hf"), log=lambda *a: None, progress=False)
    mode = lambda f: os.stat(tmp / "hf" / f).st_mode & 0o777  # noqa: E731
    assert mode("model.safetensors") == mode("config.json")  # not safetensors' 0600
    r = CheckpointReader(find_checkpoint(avg))
    assert torch.equal(HFWeights(str(tmp / "hf")).get("model.norm.weight"), r.read("final_norm.weight"))
