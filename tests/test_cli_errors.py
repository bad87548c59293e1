"""A malformed flag (wrong choice, wrong type, missing argument) is, for every command of the project,
ONE line on stderr starting ``error: `` that names the flag, exit status 2, no usage block and no
traceback (megatron_th/cli/parser.py); ``--help`` is argparse's usage."""
import importlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = [  # (module with main(argv), argv, what the line must name)
    ("megatron_th.training.pretrain", ["--optimizer", "adamw"], "argument --optimizer: invalid choice: 'adamw'"),
    ("megatron_th.training.pretrain", ["--ema-decay", "abc"], "argument --ema-decay: invalid float value: 'abc'"),
    ("megatron_th.training.ref_logps", ["--micro-batch-size", "x"], "argument --micro-batch-size"),
    ("megatron_th.cli.average_checkpoints", ["--load", "x", "--iterations", "a,b", "--output", "y"],
     "argument --iterations: expected comma-separated integers, got 'a,b'"),
    ("megatron_th.cli.average_checkpoints", ["--load", "x"], "required: --iterations, --output"),
    ("megatron_th.cli.estimate", ["--kernels", "gpu"], "argument --kernels: invalid choice: 'gpu'"),
    ("megatron_th.cli.convert_to_hf", ["--load", "x", "--output", "y", "--dtype", "fp8"], "argument --dtype"),
    ("megatron_th.cli.convert_from_hf", ["--hf", "x", "--output", "y", "--dtype", "fp8"], "argument --dtype"),
    ("megatron_th.data.preprocess", ["--workers", "many"], "argument --workers: invalid int value"),
    ("megatron_th.data.preprocess_sft", ["--workers", "many"], "argument --workers"),
    ("megatron_th.data.preprocess_dpo", ["--workers", "many"], "argument --workers"),
    ("megatron_th.data.train_tokenizer", ["--model-type", "wordpiece"], "argument --model-type"),
    ("megatron_th.data.extend_tokenizer", ["--base", "x"], "required: --add, --output"),
    ("megatron_th.data.clean.cli", ["--executor", "k8s"], "argument --executor"),
    ("tools.plot_logs", [], "required: metrics"),
    ("tools.checkpoint_info", ["--iteration", "x"], "argument --iteration"),
    ("tools.generate", ["--max-new-tokens", "x"], "argument --max-new-tokens"),
    ("tools.demo", ["--nproc", "x"], "argument --nproc"),
]


@pytest.mark.parametrize("module,argv,named", CASES,
                         ids=[f"{m.rsplit('.', 1)[1]}-{i}" for i, (m, _, _) in enumerate(CASES)])
def test_a_bad_flag_is_one_error_line(capsys, module, argv, named):
    main = importlib.import_module(module).main
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    assert e.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and named in err, err
    assert "usage:" not in err + out and "Traceback" not in err
    flag = re.match(r"error: argument (--[\w-]+)", err)
    assert flag is None or err.count(flag.group(1)) == 1, err  # the flag is named once (--iterations a,b)


def test_every_parser_is_the_shared_one():
    """No command builds a plain argparse.ArgumentParser (whose error() prints the usage block)."""
    plain = []
    files = [os.path.join(ROOT, "pretrain_gpt.py")]
    for top in ("megatron_th", "tools"):
        for d, _, fs in os.walk(os.path.join(ROOT, top)):
            files += [os.path.join(d, f) for f in fs if f.endswith(".py")]
    for path in files:
        with open(path, encoding="utf-8") as f:
            if "argparse.ArgumentParser(" in f.read():
                plain.append(os.path.relpath(path, ROOT))
    assert not plain, plain


def test_help_is_argparses(capsys):
    from megatron_th.cli.average_checkpoints import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: ") and "--iterations ITERATIONS" in out
