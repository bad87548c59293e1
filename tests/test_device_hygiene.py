"""Device choice, process-group set-up and teardown, TF32 and the MFU peak: the GPU path's rules,
checked on CPU with CUDA and torch.distributed calls stubbed where a GPU would be needed."""
import datetime
import json

import pytest
import torch
import torch.distributed as dist

from megatron_th.config import ConfigError
from megatron_th.parallel import groups as G
from megatron_th.training import metrics as M
from megatron_th.training import pretrain as pt


class Stop(Exception):
    pass


@pytest.fixture
def no_group():
    """Leaves no process group behind, whatever the test did."""
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_device_is_a_function_of_backend_local_rank_and_gpu_count():
    cpu, cuda = torch.device("cpu"), torch.device
    assert G.choose_device("gloo", 0, 8) == ("gloo", cpu)        # gloo: CPU tensors though GPUs exist
    assert G.choose_device("gloo", 5, 0) == ("gloo", cpu)
    assert G.choose_device(None, 0, 0) == ("gloo", cpu)          # default: gloo without GPUs ...
    assert G.choose_device(None, 1, 2) == ("nccl", cuda("cuda", 1))  # ... NCCL on GPU LOCAL_RANK with them
    assert G.choose_device("nccl", 3, 4) == ("nccl", cuda("cuda", 3))
    with pytest.raises(ConfigError, match=r"LOCAL_RANK 2 .*2 visible.*CUDA_VISIBLE_DEVICES '0,1'"):
        G.choose_device("nccl", 2, 2, "0,1")
    with pytest.raises(ConfigError, match=r"needs a CUDA GPU.*CUDA_VISIBLE_DEVICES ''.*--distributed-backend gloo"):
        G.choose_device("nccl", 0, 0, "")


def test_the_suite_never_moves_onto_a_gpu(monkeypatch):
    """Even with GPUs present, runs in this suite (no --distributed-backend) and gloo runs stay on CPU."""
    def no_gpu(*a, **k):
        raise AssertionError("moved onto a GPU")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", no_gpu)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert G.init_distributed(None)[2] == torch.device("cpu")   # conftest: MEGATRON_TH_DISTRIBUTED_BACKEND=gloo
    assert G.init_distributed("gloo")[2] == torch.device("cpu")


def test_init_process_group_gets_timeout_and_eager_device(monkeypatch):
    calls, devices = [], []

    def fake_init(backend, **kw):
        calls.append(dict(kw, backend=backend))
        raise Stop

    monkeypatch.setattr(dist, "init_process_group", fake_init)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    for k, v in dict(WORLD_SIZE="4", RANK="3", LOCAL_RANK="1").items():
        monkeypatch.setenv(k, v)
    with pytest.raises(Stop):
        G.init_distributed("nccl", timeout_minutes=7)
    with pytest.raises(Stop):
        G.init_distributed("gloo", timeout_minutes=3)
    nccl, gloo = calls
    assert nccl == {"backend": "nccl", "rank": 3, "world_size": 4, "timeout": datetime.timedelta(minutes=7),
                    "device_id": torch.device("cuda", 1)}
    assert devices == [torch.device("cuda", 1)]                 # only the NCCL rank selected its GPU
    assert gloo == {"backend": "gloo", "rank": 3, "world_size": 4, "timeout": datetime.timedelta(minutes=3)}
    monkeypatch.setenv("LOCAL_RANK", "2")                       # 2 GPUs, third process on the node
    with pytest.raises(ConfigError, match="LOCAL_RANK 2.*CUDA_VISIBLE_DEVICES"):
        G.init_distributed("nccl")


def test_main_destroys_the_process_group_on_every_path(monkeypatch, capsys, no_group):
    """Success, a configuration error after init, and an unexpected error: no group is left."""
    seen, real_init = [], dist.init_process_group

    def one_rank_init(backend, **kw):  # a real gloo group of one process, standing in for torchrun's
        seen.append(kw["timeout"])
        real_init(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=kw["timeout"])

    monkeypatch.setattr(G.dist, "init_process_group", one_rank_init)
    for k, v in dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0").items():
        monkeypatch.setenv(k, v)
    # --global-batch-size 3 does not split over DP 2: ConfigError raised after the group exists
    assert pt.main(["--global-batch-size", "3", "--micro-batch-size", "1", "--distributed-timeout-minutes", "4"]) == 2
    assert "error: --global-batch-size 3" in capsys.readouterr().err
    assert seen == [datetime.timedelta(minutes=4)] and not dist.is_initialized()

    def fake_pretrain(outcome):
        def run(cfg):
            G.init_distributed(None, cfg.parallel.distributed_timeout_minutes)
            if outcome:
                raise outcome
        return run

    monkeypatch.setattr(pt, "pretrain", fake_pretrain(None))
    assert pt.main([]) == 0 and not dist.is_initialized()
    monkeypatch.setattr(pt, "pretrain", fake_pretrain(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        pt.main([])
    assert not dist.is_initialized()


def test_tf32_decision():
    for dev, prec, flag, want in [("cuda", "fp32", None, True), ("cuda", "bf16", None, False),
                                  ("cuda", "fp16", None, False), ("cuda", "fp32", False, False),
                                  ("cuda", "bf16", True, True), ("cpu", "fp32", None, False),
                                  ("cpu", "fp32", True, False), ("meta", "fp32", None, False)]:
        assert M.tf32_enabled(dev, prec, flag) is want, (dev, prec, flag)


def test_peak_names_its_source_and_the_mfu_line_shows_it(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-80GB")
    assert M.peak_tflops("fp32", "cuda", tf32=True) == M.Peak(156.0, "tf32 (A100 SXM4 80GB table)")
    assert M.peak_tflops("fp32", "cuda", tf32=False) == M.Peak(19.5, "fp32 (A100 SXM4 80GB table)")
    assert M.peak_tflops("bf16", "cuda") == M.Peak(312.0, "bf16 (A100 SXM4 80GB table)")
    assert M.peak_tflops("bf16", "cuda", 400.0) == M.Peak(400.0, "given by --peak-tflops")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-32GB")
    assert M.peak_tflops("fp32", "cuda", tf32=True) == M.Peak(15.7, "fp32 (V100 SXM2 32GB (no bf16) table)")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA Some Future GPU")
    monkeypatch.setattr(M, "measure_matmul", lambda dt, dev: (123.0, 8192, 9))
    assert M.peak_tflops("fp32", "cuda", tf32=True) == M.Peak(123.0, "tf32 measured (8192^3 matmul x9 on cuda)")

    log = M.MetricsLogger(None, True, 10)
    log.train({"iteration": 1, "lm_loss": 2.0, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_sec": 1e4, "tflops": 78.0,
               "mfu": 0.5, "peak_tflops": 156.0, "peak_source": "tf32 (A100 SXM4 80GB table)"}, 60)
    assert "| MFU 50% of 156 TFLOP/s tf32 (A100 SXM4 80GB table) |" in capsys.readouterr().out


def test_matmul_peak_is_warmed_and_the_best_of_several_repetitions():
    """time_matmuls on a simulated device of 10 GFLOP/s whose first two calls are 20x slow (cold)
    and two of every three calls 1.5x slow (a busy neighbour): it finds the device's rate."""
    rate, calls = 10e9, []

    def timer(n, k):
        calls.append((n, k))
        slow = 20 if len(calls) <= 2 else 1.5 if len(calls) % 3 else 1
        return 2 * n ** 3 * k / rate * slow

    assert M.time_matmuls(timer, target_seconds=0.2, reps=5) == (pytest.approx(rate / 1e12), 512, 1)
    assert calls[:2] == [(256, 1), (256, 1)]  # the cold calls were at the smallest size, and did not stop it
    # on a steady device of any speed the measurement lasts about the target time (0.2 s), in
    # repetitions of about target / reps (0.04 s): never one small matmul
    for rate in (10e9, 300e9, 1e12):
        calls.clear()
        tflops, n, k = M.time_matmuls(lambda n, k: calls.append((n, k)) or 2 * n ** 3 * k / rate, 0.2, reps=5)
        assert tflops == pytest.approx(rate / 1e12) and 0.02 <= 2 * n ** 3 * k / rate <= 0.08
        assert 0.2 <= sum(2 * n ** 3 * k / rate for n, k in calls) <= 0.3


def test_a_cpu_run_divides_by_its_measured_peak(tmp_path, capsys):
    from tests.test_tensor_parallel import _data
    from tests.test_training import run, tiny_argv

    logs = []
    run(tiny_argv(_data(tmp_path), tmp_path, "--train-iters", "2", "--log-dir", str(tmp_path / "logs")), logs)
    assert "TF32 for fp32 matmuls: off (fp32 on cpu)" in logs
    peak = M.measure_matmul(torch.float32, "cpu")[0]  # measured once per process: the run's own figure
    recs = [json.loads(line) for line in open(tmp_path / "logs" / "metrics.jsonl")]
    for rec in recs:
        assert rec["peak_source"].startswith("fp32 measured (") and rec["peak_tflops"] == peak
        assert rec["mfu"] == rec["tflops"] / peak and 0 < rec["mfu"] < 1  # a tiny model is far below a big matmul
    assert f"of {peak:.3g} TFLOP/s fp32 measured (" in capsys.readouterr().out
