"""Issue 18: the cleaning pipeline under datatrove's Slurm executor (a stub ``sbatch`` on PATH) and
Ray (skipped when Ray is not installed), compared with the local executor; bad flags and inputs.

The stub ``sbatch`` records each submission and answers like Slurm; the test then plays the
scheduler: it runs each recorded job array, in submission order, the way the job script does
(``launch_pickled_pipeline executor.pik`` with ``SLURM_ARRAY_TASK_ID`` set), in this process."""
import glob
import gzip
import json
import os
import re
import signal
import stat
import sys

import pytest

pytest.importorskip("datatrove", reason="the cleaning pipeline needs the [data] extra (datatrove)")
pytest.importorskip("pythainlp", reason="the cleaning pipeline needs the [data] extra (pythainlp)")

import dill  # noqa: E402  (a datatrove dependency: its Slurm jobs unpickle the executor with it)

from megatron_th.data.clean import cli, synthetic  # noqa: E402

SBATCH = """#!/bin/sh
# stub: keep the script and the arguments, answer like sbatch
n=$(ls "$STUB_LOG" | grep -c '\\.sh$')
for last; do :; done
cp "$last" "$STUB_LOG/$n.sh"
printf '%s\\n' "$@" > "$STUB_LOG/$n.args"
echo "Submitted batch job $((1000 + n))"
"""
SCONTROL = "#!/bin/sh\necho node1\n"


def small_corpus(folder):
    docs = synthetic.make_corpus(seed=2, n_th=10, n_en=4, near_th=4, near_en=1, exact=1)
    return synthetic.write_jsonl(docs, folder, files=4)


def kept(out):
    recs = []
    for p in sorted(glob.glob(os.path.join(out, "kept", "*.jsonl.gz"))):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            recs += [json.loads(line) for line in f]
    return recs


@pytest.fixture
def stubs(tmp_path, monkeypatch):
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch_log"
    bin_dir.mkdir()
    log.mkdir()
    for name, body in (("sbatch", SBATCH), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_LOG", str(log))
    return log


def test_slurm_submits_dependent_arrays_and_runs_like_local(tmp_path, stubs, monkeypatch, capsys):
    paths = small_corpus(str(tmp_path / "crawl"))
    base = ["--input", *paths, "--tasks", "2", "--quiet"]
    local = cli.run(cli.build_parser().parse_args(base + ["--output-dir", str(tmp_path / "local"), "--workers", "1"]))

    out = str(tmp_path / "slurm")
    assert cli.main(base + ["--output-dir", out, "--executor", "slurm", "--slurm-partition", "cpu"]) == 0
    assert "submitted 8 Slurm jobs" in capsys.readouterr().err
    jobs = []
    for n in range(len(glob.glob(str(stubs / "*.sh")))):
        script, args = (stubs / f"{n}.sh").read_text(), (stubs / f"{n}.args").read_text().split("\n")
        pik = re.search(r"launch_pickled_pipeline (\S+executor\.pik)", script)
        if pik:  # a stage (the other submissions are datatrove's merge_stats jobs)
            dep = [a for a in args if a.startswith("--dependency=")]
            jobs.append((1000 + n, pik.group(1), int(re.search(r"--array=0-(\d+)", script).group(1)) + 1, dep))
            assert "#SBATCH --partition=cpu" in script and f"export PATH={os.path.dirname(sys.executable)}" in script
    stages = [os.path.basename(os.path.dirname(p)) for _, p, _, _ in jobs]
    assert stages == ["01_boilerplate_count", "02_boilerplate_merge", "03_filter", "04_minhash_signature",
                      "05_minhash_buckets", "06_minhash_cluster", "07_write", "08_finalize"]
    assert [a for _, _, a, _ in jobs] == [2, 2, 2, 2, 15, 1, 2, 1]       # buckets: (14 + 1 exact) x 1
    assert jobs[0][3] == [] and all(dep == [f"--dependency=afterok:{prev[0]}"] for prev, (_, _, _, dep) in
                                    zip(jobs, jobs[1:]))
    assert not os.path.exists(os.path.join(out, "stats.json"))            # nothing ran yet

    usr1 = signal.getsignal(signal.SIGUSR1)
    try:
        monkeypatch.setenv("SLURM_NODELIST", "node1")
        for _, pik, array, _ in jobs:                                      # the scheduler, in dependency order
            for task in range(array):
                monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
                with open(pik, "rb") as f:
                    dill.load(f).run()
    finally:
        signal.signal(signal.SIGUSR1, usr1)
    with open(os.path.join(out, "stats.json")) as f:
        assert json.load(f) == local
    assert kept(out) == kept(str(tmp_path / "local"))


def test_ray(tmp_path):
    pytest.importorskip("ray", reason="Ray is optional (pip install ray); the Ray executor is not tested without it")
    import ray
    paths = small_corpus(str(tmp_path / "crawl"))
    base = ["--input", *paths, "--tasks", "2", "--quiet"]
    local = cli.run(cli.build_parser().parse_args(base + ["--output-dir", str(tmp_path / "local"), "--workers", "1"]))
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        args = base + ["--output-dir", str(tmp_path / "ray"), "--executor", "ray"]
        assert cli.run(cli.build_parser().parse_args(args)) == local
    finally:
        ray.shutdown()


@pytest.mark.parametrize("extra,message", [
    (["--input", "missing/*.jsonl"], "error: --input missing/*.jsonl: no such file"),
    (["--tokenizer-model", "x.model"], "error: --tokenizer-model and --output-prefix go together"),
    (["--executor", "slurm"], "error: --executor slurm needs --slurm-partition"),
    (["--tasks", "0"], "error: --tasks must be >= 1"),
    (["--config", "nowhere.yaml"], "error: nowhere.yaml: cannot read the config"),
])
def test_bad_flags_are_one_error_line(tmp_path, capsys, extra, message):
    (tmp_path / "a.jsonl").write_text('{"text": "สวัสดี"}\n')
    argv = ["--input", str(tmp_path / "a.jsonl"), "--output-dir", str(tmp_path / "out")]
    for flag in ("--input",):
        if flag in extra:
            argv = argv[2:]
    assert cli.main(argv + extra) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)
    assert not os.path.exists(tmp_path / "out")                           # nothing written


def test_ray_missing_is_one_error_line(tmp_path, capsys):
    try:
        import ray  # noqa: F401
        pytest.skip("Ray is installed: test_ray runs it")
    except ImportError:
        pass
    (tmp_path / "a.jsonl").write_text('{"text": "สวัสดี"}\n')
    argv = ["--input", str(tmp_path / "a.jsonl"), "--output-dir", str(tmp_path / "out"), "--executor", "ray"]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err.strip() == "error: --executor ray needs Ray (`pip install ray`)"
