"""Only whitelisted environment keys of the target are ever read into the database."""

from __future__ import annotations

import os
import subprocess
import sys

from agent.target import target_env, whitelist_env


def test_whitelist_keeps_rank_layout_and_drops_everything_else():
    env = {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "SLURM_JOB_ID": "42",
        "TPU_NAME": "v5e",
        "AWS_SECRET_ACCESS_KEY": "x",
        "WANDB_API_KEY": "x",
        "HF_TOKEN": "x",
        "PATH": "/bin",
        "SLURM_AUTH_TOKEN": "x",
    }
    assert whitelist_env(env) == {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "SLURM_JOB_ID": "42",
        "TPU_NAME": "v5e",
    }


def test_target_env_reads_a_real_process():
    import psutil

    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(5)"],
        env={**os.environ, "RANK": "2", "MY_PASSWORD": "hunter2"},
    )
    try:
        env = target_env(psutil.Process(child.pid))
        assert env.get("RANK") == "2"
        assert "MY_PASSWORD" not in env and "PATH" not in env
    finally:
        child.kill()
        child.wait()
