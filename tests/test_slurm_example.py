"""examples/slurm/pretrain.sbatch: valid bash, and run against stub srun / scontrol / torchrun (first on
PATH, recording their arguments) it starts one torchrun per node with a c10d rendezvous at the
job's first node, the node count from Slurm, and no hand-made node rank."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "slurm", "pretrain.sbatch")

STUBS = {  # each records its arguments, one per line, in $RECORD/<name>.args
    # the second host comes after `head -n1` has gone: a real scontrol may meet the closed pipe too
    "scontrol": 'printf "%s\\n" "$@" > "$RECORD/scontrol.args"\n'
                '[ "$1 $2" = "show hostnames" ] && printf "gpu-a07\\n" && sleep 0.3 && printf "gpu-a08\\n"\n',
    # srun runs its command once here (as on one node), after its own options
    "srun": 'printf "%s\\n" "$@" >> "$RECORD/srun.args"\n'
            'while [ "${1#-}" != "$1" ]; do shift; done\n"$@"\n',
    "torchrun": 'printf "%s\\n" "$@" > "$RECORD/torchrun.args"\n'
                'env | grep -E "^(TORCH|NCCL)_" | sort > "$RECORD/torchrun.env"\n',
}


def test_sbatch_is_valid_bash():
    out = subprocess.run(["bash", "-n", SCRIPT], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_sbatch_launches_one_torchrun_per_node_with_c10d_rendezvous(tmp_path):
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCH_", "NCCL_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", RECORD=str(record), SLURM_JOB_NODELIST="gpu-a[07-08]",
               SLURM_NNODES="2", SLURM_JOB_ID="4242", SLURM_JOB_NAME="megatron_th", SLURM_SUBMIT_DIR=str(tmp_path),
               SAVE="/shared/ckpt/run1")
    out = subprocess.run(["bash", SCRIPT, "--train-iters", "10"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (record / "scontrol.args").read_text().split() == ["show", "hostnames", "gpu-a[07-08]"]
    srun = (record / "srun.args").read_text().split("\n")
    assert srun[0] == "--ntasks-per-node=1" and srun.count("torchrun") == 1  # no gpu_check unless asked
    args = (record / "torchrun.args").read_text().split("\n")[:-1]

    def value(flag):
        return args[args.index(flag) + 1]

    assert value("--nnodes") == "2" and value("--nproc-per-node") == "8"
    assert value("--rdzv-backend") == "c10d" and value("--rdzv-endpoint") == "gpu-a07:29500"
    assert value("--rdzv-id") == "4242"
    # the rendezvous numbers the nodes: every node runs the same command, no rank of its own
    assert not any(a.startswith(("--node-rank", "--node_rank", "--master-addr", "--master_addr")) for a in args)
    i = args.index("pretrain_gpt.py")
    assert args[i:] == ["pretrain_gpt.py", "--config", "examples/llama_7b_4xa100.yaml", "--save", "/shared/ckpt/run1",
                        "--load", "/shared/ckpt/run1", "--train-iters", "10"]
    recorded_env = (record / "torchrun.env").read_text().splitlines()
    assert "TORCH_NCCL_DUMP_ON_TIMEOUT=1" in recorded_env and "TORCH_FR_BUFFER_SIZE=2000" in recorded_env
    assert f"TORCH_FR_DUMP_TEMP_FILE={tmp_path}/fr_traces/4242/rank_" in recorded_env
    # outside a Slurm job: one clear line, nothing launched
    del env["SLURM_JOB_NODELIST"]
    (record / "torchrun.args").unlink()
    out = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "submit with sbatch" in out.stderr
    assert not (record / "torchrun.args").exists()
