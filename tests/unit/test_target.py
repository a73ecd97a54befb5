"""Only allow-listed environment keys of the target are ever read into the database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from agent.target import ENV_KEYS, allowed_env, target_env
from tests.helpers import REPO

#: Credentials that sit beside the identity keys, some under the same prefixes.
SECRETS = {
    "SLURM_JWT": "eyJhbGciOi.secret",
    "SLURM_AUTH_TOKEN": "x",
    "SLURM_MYSECRET": "x",
    "TPU_NAME": "my-tpu",
    "TPU_API_TOKEN": "x",
    "AWS_SECRET_ACCESS_KEY": "x",
    "WANDB_API_KEY": "x",
    "HF_TOKEN": "x",
    "MY_PASSWORD": "hunter2",
    "PATH": "/bin",
    "KUBERNETES_SERVICE_HOST": "10.0.0.1",
}
IDENTITY = {
    "RANK": "3",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "8",
    "CUDA_VISIBLE_DEVICES": "0,1",
    "SLURM_JOB_ID": "42",
    "SLURM_PROCID": "3",
    "TPU_WORKER_ID": "2",
    "MEGASCALE_SLICE_ID": "0",
}


def test_allow_list_keeps_job_identity_and_drops_everything_else():
    assert allowed_env({**IDENTITY, **SECRETS}) == IDENTITY


def test_allow_list_has_no_wildcards_and_no_secret_looking_key():
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", key) for key in ENV_KEYS)
    assert not [k for k in ENV_KEYS if re.search("TOKEN|SECRET|PASSWORD|JWT|AUTH|KEY$", k)]


def test_readme_and_promises_list_exactly_the_allowed_keys():
    for doc in ("README.md", "docs/promises.md"):
        text = (REPO / doc).read_text()
        listed = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", text)) & (ENV_KEYS | set(SECRETS))
        assert listed >= ENV_KEYS, (doc, sorted(ENV_KEYS - listed))


def test_target_env_reads_a_real_process():
    import psutil

    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(5)"],
        env={**os.environ, "RANK": "2", **SECRETS},
    )
    try:
        # Popen can return while the kernel is still laying out the new image, whose
        # environment reads empty for that instant: read again until it is there.
        proc = psutil.Process(child.pid)
        deadline = time.monotonic() + 5
        while not (env := target_env(proc)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert env.get("RANK") == "2"
        assert not set(SECRETS) & set(env)
    finally:
        child.kill()
        child.wait()
