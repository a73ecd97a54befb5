"""``accelwatch capture`` writes the sources' files, 0700/0600, without secrets; replay works."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.source import CollectContext
from collectors.fabric.collector import FabricCollector
from collectors.storage.collector import StorageCollector
from tests.helpers import query, run_cli

HOLD = "import sys,time; f=open(sys.argv[1],'w'); f.write('x'); f.flush(); print('ok', flush=True); time.sleep(60)"  # noqa: E501


def _holder(tmp_path: Path) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "held.txt")],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "SECRET_TOKEN": "hunter2"},
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ok"
    return child


def test_capture_writes_only_the_sources_files_private_and_without_secrets(tmp_path):
    child = _holder(tmp_path)
    out = tmp_path / "cap"
    try:
        result = run_cli("capture", "--out", str(out), "--pid", str(child.pid))
    finally:
        child.kill()
        child.wait()
    assert result.returncode == 0, result.stderr
    assert "--sys-root" in result.stdout
    pdir = out / "proc" / str(child.pid)
    assert {p.name for p in pdir.iterdir()} <= {"mountinfo", "mountstats", "io", "fd", "cwd"}
    assert str(tmp_path / "held.txt") in {os.readlink(p) for p in (pdir / "fd").iterdir()}
    for path in out.rglob("*"):
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
        if path.is_file():
            assert b"hunter2" not in path.read_bytes()
    manifest = json.loads((out / "capture.json").read_text())
    assert manifest["pids"] == [child.pid] and manifest["files"] > 0


def test_replaying_a_capture_finds_the_captured_processes_mounts(tmp_path):
    child = _holder(tmp_path)
    out = tmp_path / "cap"
    try:
        assert run_cli("capture", "--out", str(out), "--pid", str(child.pid)).returncode == 0
    finally:
        child.kill()
        child.wait()
    collector = StorageCollector(rescan_s=0)
    collector.start(
        CollectContext(root_pid=os.getpid(), sys_root=str(out / "sys"), proc_root=str(out / "proc"))
    )
    batch = collector.collect(1.0)
    assert any(child.pid in a["pids"] for a in batch.entity_attrs.values())
    fabric = FabricCollector()
    fabric.start(CollectContext(sys_root=str(out / "sys")))
    live = FabricCollector()
    live.start(CollectContext())
    assert set(fabric.collect(1.0).entities) == set(live.collect(1.0).entities)


def test_capture_refuses_a_directory_that_is_not_empty_and_a_missing_process(tmp_path):
    (tmp_path / "x").write_text("")
    refused = run_cli("capture", "--out", str(tmp_path))
    assert refused.returncode == 2 and "not an empty directory" in refused.stderr
    missing = run_cli("capture", "--out", str(tmp_path / "new"), "--pid", "99999999")
    assert missing.returncode == 3 and missing.stderr.count("\n") == 1


@pytest.mark.parametrize("given_by", ["options", "environment"])
def test_a_run_replaying_a_captured_tree_records_its_mounts(tmp_path, given_by):
    """The tree is named by ``--sys-root/--proc-root`` or by ``ACCELWATCH_SYS_ROOT`` /
    ``ACCELWATCH_PROC_ROOT``, the same replay either way."""
    child = _holder(tmp_path)
    out = tmp_path / "cap"
    try:
        assert run_cli("capture", "--out", str(out), "--pid", str(child.pid)).returncode == 0
    finally:
        child.kill()
        child.wait()
    db = tmp_path / "replay.duckdb"
    roots = ("--sys-root", str(out / "sys"), "--proc-root", str(out / "proc"))
    env = {"ACCELWATCH_SYS_ROOT": str(out / "sys"), "ACCELWATCH_PROC_ROOT": str(out / "proc")}
    by_options = given_by == "options"
    result = run_cli(
        "run", "--db", str(db), "--headless", "--interval", "0.2", *(roots if by_options else ()),
        "--", sys.executable, "-c", "import time; time.sleep(1)", env={} if by_options else env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    mounts = query(db, "SELECT entity, attrs FROM entities WHERE source = 'storage'")
    assert mounts, result.stderr
    # read from the captured tree, not the live one: the captured (now gone) process holds them
    assert any(child.pid in json.loads(attrs)["pids"] for _, attrs in mounts), mounts


def test_capture_masks_every_mount_option_that_names_a_credential(tmp_path):
    """Masking is by the option's name, whatever its separators: an underscore after the
    word (``aws_secret_access_key``) hides it as well as a plain ``password``."""
    from agent.app.capture_command import capture

    proc = tmp_path / "proc" / "4242"
    proc.mkdir(parents=True)
    options = (
        "rw,relatime,aws_secret_access_key=SEKRIT1,access_key_id=AKIASEKRIT2,"
        "password=SEKRIT3,passwd_file=/etc/SEKRIT4,token=SEKRIT5,credentials=/root/SEKRIT6,"
        "SecretKey=SEKRIT7,auth_token=SEKRIT8,uid=1000,vers=4.2"
    )
    (proc / "mountinfo").write_text(f"36 25 0:33 / /mnt/s3 rw,nosuid - fuse.s3fs s3fs {options}\n")
    (proc / "mountstats").write_text(
        f"device s3fs mounted on /mnt/s3 with fstype fuse.s3fs\n\topts:\t{options}\n"
    )
    out = tmp_path / "cap"
    capture(str(out), str(tmp_path / "sys"), str(tmp_path / "proc"), [4242])
    for name in ("mountinfo", "mountstats"):
        text = (out / "proc" / "4242" / name).read_text()
        assert "SEKRIT" not in text, text
        # what is not a credential stays, so the replay sees the same mounts and options
        assert "uid=1000" in text and "vers=4.2" in text and "/mnt/s3" in text
        assert "aws_secret_access_key=***" in text and "password=***" in text


def test_capture_without_a_process_says_that_no_mounts_are_captured(tmp_path):
    result = run_cli("capture", "--out", str(tmp_path / "cap"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and "no --pid given" in result.stderr
    assert not (tmp_path / "cap" / "proc").exists() or not any(
        (tmp_path / "cap" / "proc").iterdir()
    )
