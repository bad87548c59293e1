"""benchmarks/gpu_check.sh --cpu: the GPU node check runs its steps on CPU + gloo inside the suite,
so it cannot rot before someone runs it on a GPU. One line per step, a JSON report, exit 0; a
failing step or a hanging one (killed at its timeout) makes the exit non-zero."""
import json
import math
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r"^STEP (\S+) (PASS|FAIL|SKIP) (\S+) (\S+)(?: \| (.+))?$")
PARALLEL = {"parity_tp4_sp", "parity_pp4_1f1b", "parity_pp2_interleaved", "parity_dp4_zero1",
            "parity_tp2_pp2_sp_zero1", "reshard_tp2_pp2_sp_zero1_to_pp2_interleaved", "pipeline_probe"}
SINGLE = {"env", "loss_kernel", "train_loss_falls", "resume_matches", "zero1_save_peak", "host_syncs", "throughput_tokens",
          "throughput_tflops", "throughput_mfu", "parity_reference"}
ATTENTION = {"attention_dense", "attention_sdpa", "attention_varlen", "attention_auto"}
CUDA_ONLY = {"attention_flex", "attention_flash", "attention_te"}  # SKIP on CPU, with the reason


def gpu_check(tmp_path, *args):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu", "--out", str(out), "--workdir",
                           str(tmp_path / "work"), *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    steps = [LINE.match(line) for line in proc.stdout.splitlines() if line.startswith("STEP ")]
    report = json.loads(out.read_text()) if out.exists() else None
    return proc, steps, report


def test_cpu_check_runs_every_step_and_passes(tmp_path):
    proc, steps, report = gpu_check(tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert all(line.startswith(("STEP ", "gpu_check: ")) for line in lines), lines
    assert all(steps), [line for line in lines if line.startswith("STEP ") and not LINE.match(line)]
    names = [m[1] for m in steps]
    assert len(names) == len(set(names)) and set(names) == SINGLE | ATTENTION | CUDA_ONLY | PARALLEL
    assert names[0] == "env" and names[-1] == "pipeline_probe"
    for m in steps:
        name, status, value = m[1], m[2], float(m[3])
        if name in CUDA_ONLY:
            assert status == "SKIP" and ("CUDA" in m[5] or "CPU" in m[5]), m[0]
        else:
            assert status == "PASS" and math.isfinite(value), m[0]
    # the JSON holds the same results, in the same order, with the documented fields
    assert report["mode"] == "cpu" and report["passed"] is True
    assert [s["step"] for s in report["steps"]] == names
    for s, m in zip(report["steps"], steps):
        assert {"step", "status", "value", "unit", "detail", "seconds"} <= set(s)
        assert (s["status"], s["unit"]) == (m[2], m[4]) and s["seconds"] >= 0
    by = {s["step"]: s for s in report["steps"]}
    assert by["train_loss_falls"]["value"] > 0.3
    assert by["resume_matches"]["value"] <= 1e-6
    assert all(by[n]["value"] <= 1e-4 for n in PARALLEL - {"pipeline_probe"})
    assert 0 < by["throughput_mfu"]["value"] <= 100
    assert "gloo" in by["pipeline_probe"]["detail"] and "interleaved finished" in by["pipeline_probe"]["detail"]
    # gloo, at most 4 ranks, one single-process worker and one multi-rank launch
    summary = lines[-1] if "launches" in lines[-1] else next(x for x in lines if "launches" in x)
    assert "(2 launches)" in summary, summary


def test_a_hanging_or_failing_step_makes_the_exit_nonzero(tmp_path):
    # env hangs: killed at its timeout (30 s x 0.1), reported, and the rest runs in a new launch, where
    # one attention result is made to fail
    proc, steps, report = gpu_check(tmp_path, "--only", "env,attention", "--inject", "hang:env",
                                    "--inject", "fail:attention_sdpa", "--timeout-scale", "0.1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    status = {m[1]: m[2] for m in steps}
    assert status["env"] == "FAIL" and "timed out after 3 s" in steps[0][5]
    log = steps[0][5].split("log ")[-1].rstrip(")")
    assert "sleeping" in open(log).read()  # the log named in the detail is the hung worker's
    assert status["attention_sdpa"] == "FAIL" and "injected" in next(m[5] for m in steps if m[1] == "attention_sdpa")
    assert status["attention_dense"] == "PASS" and len(status) == len(ATTENTION | CUDA_ONLY) + 1
    assert report["passed"] is False and [s["status"] for s in report["steps"]] == [m[2] for m in steps]
    assert "(2 launches)" in proc.stdout
