"""``accelwatch merge``: per-rank / per-node databases of one job become one run."""

from __future__ import annotations

import json
import os
import stat

from tests.experiments.recordings import Recording, record
from tests.helpers import query, run_cli


def _slurm(rank: int, node: str, ntasks: int = 2) -> dict[str, str]:
    return {"SLURM_JOB_ID": "4711", "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(ntasks),
            "SLURMD_NODENAME": node}  # fmt: skip


def _per_rank_files(tmp_path, layout, **kw):
    """One database per rank: ``layout`` is [(rank, node)]; each records its rank as rank0
    (a per-rank client that does not know its global rank) and its node's two GPUs."""
    files = []
    for rank, node in layout:
        files.append(
            record(
                tmp_path / f"rank{rank}.duckdb",
                Recording(
                    f"r{rank}",
                    env=_slurm(rank, node, len(layout)),
                    host=node,
                    t0=1.7e9 + rank,
                    **kw,
                ),
            )  # fmt: skip
        )
    return files


def test_merge_of_two_per_rank_databases_gives_one_run_with_both_ranks(tmp_path):
    a, b = _per_rank_files(tmp_path, [(0, "nodeA"), (1, "nodeB")])
    before = [a.read_bytes(), b.read_bytes()]
    out = tmp_path / "job.duckdb"
    done = run_cli("merge", str(a), str(b), "--into", str(out), "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("\n") == 1 and "merged 2 runs of job slurm:4711" in done.stderr
    (merged,) = json.loads(done.stdout)
    assert merged["from"] == ["r0", "r1"] and merged["nodes"] == ["nodeA", "nodeB"]
    assert [a.read_bytes(), b.read_bytes()] == before  # inputs never modified
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    ((run_id, mode, host, status),) = query(out, "SELECT run_id, mode, host, status FROM runs")
    assert (run_id, mode, host, status) == (merged["run_id"], "merged", "nodeA,nodeB", "finished")
    entities = dict(query(out, "SELECT entity, count(*) FROM samples WHERE run_id = ? "
                               "GROUP BY entity", run_id))  # fmt: skip
    assert entities == {"rank0": 60, "rank1": 60, "gpu0": 150, "gpu1": 150, "gpu2": 150,
                        "gpu3": 150, "nodeA/host": 30, "nodeB/host": 30}  # fmt: skip
    attrs = {
        e: json.loads(a_)
        for e, a_ in query(out, "SELECT entity, attrs FROM entities WHERE entity LIKE 'gpu%'")
    }
    assert attrs["gpu2"]["node"] == "nodeB" and attrs["gpu2"]["node_entity"] == "gpu0"
    assert attrs["gpu2"]["uuid"] == "GPU-nodeB-0" and attrs["gpu0"]["uuid"] == "GPU-nodeA-0"
    (env,) = query(out, "SELECT env FROM runs")[0]
    assert json.loads(env) == {"SLURM_JOB_ID": "4711", "SLURM_NTASKS": "2"}  # common keys only


def test_merge_on_one_node_takes_the_node_devices_once_and_keeps_their_names(tmp_path):
    a, b = _per_rank_files(tmp_path, [(0, "nodeA"), (1, "nodeA")])
    out = tmp_path / "job.duckdb"
    done = run_cli("merge", str(tmp_path / "rank*.duckdb"), "--into", str(out))
    assert done.returncode == 0, done.stderr
    entities = dict(query(out, "SELECT entity, count(*) FROM samples GROUP BY entity"))
    # Both per-rank agents recorded the node's two GPUs and its host: kept once, unprefixed.
    assert entities == {"rank0": 60, "rank1": 60, "gpu0": 30 * 5, "gpu1": 30 * 5, "host": 30}


def _slows_down(rank: int, tick: int) -> float:
    """rank3 takes twice its peers' step time from 200 s on."""
    return 0.2 if rank == 3 and tick >= 200 else 0.1


def test_merged_run_is_analysed_as_one_and_finds_the_straggler_across_files(tmp_path):
    layout = [(0, "nodeA"), (1, "nodeA"), (2, "nodeB"), (3, "nodeB")]
    files = []
    for rank, node in layout:
        files.append(record(
            tmp_path / f"rank{rank}.duckdb",
            Recording(f"r{rank}", env=_slurm(rank, node, 4), host=node, seconds=400,
                      ranks=(rank,), step_time=_slows_down, gpus=1),
        ))  # fmt: skip
    for f in files:  # alone, no file has peers to compare with
        report = run_cli("report", "--db", str(f), "--json")
        assert not json.loads(report.stdout)["findings"]
    out = tmp_path / "job.duckdb"
    assert run_cli("merge", *map(str, files), "--into", str(out)).returncode == 0
    stored = query(out, "SELECT rule, entity, live FROM findings")
    assert ("straggler", "rank3", False) in stored, stored
    gpus = {e for (e,) in query(out, "SELECT DISTINCT entity FROM samples WHERE source='nvml'")}
    assert gpus == {"gpu0", "gpu1"}  # one per node, renumbered across the two nodes


def test_merge_copies_a_run_without_a_job_unchanged_with_its_findings(tmp_path):
    lone = record(
        tmp_path / "lone.duckdb", Recording("solo", findings=["io-bound"], t0=1.7e9 + 0.123457)
    )
    out = tmp_path / "out.duckdb"
    done = run_cli("merge", str(lone), "--into", str(out))
    assert done.returncode == 0, done.stderr
    assert "copied solo as it is" in done.stderr
    assert query(out, "SELECT run_id, mode FROM runs") == [("solo", "run")]
    every = "SELECT epoch_us(ts), source, entity, metric, value FROM samples ORDER BY ALL"
    assert query(out, every) == query(lone, every)  # to the microsecond
    assert query(out, "SELECT rule FROM findings") == [("io-bound",)]


def test_merging_again_into_the_same_file_skips_the_merged_run(tmp_path):
    a, b = _per_rank_files(tmp_path, [(0, "nodeA"), (1, "nodeB")])
    out = tmp_path / "job.duckdb"
    assert run_cli("merge", str(a), str(b), "--into", str(out)).returncode == 0
    rows = query(out, "SELECT count(*) FROM samples")
    again = run_cli("merge", str(a), str(b), "--into", str(out))
    assert again.returncode == 0 and "skipped" in again.stderr
    assert query(out, "SELECT count(*) FROM samples") == rows


def test_merge_refuses_to_overwrite_a_non_accelwatch_file_in_one_line(tmp_path):
    a, b = _per_rank_files(tmp_path, [(0, "nodeA"), (1, "nodeB")])
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n" * 2000)
    done = run_cli("merge", str(a), str(b), "--into", str(notes))
    assert done.returncode == 4 and done.stderr.count("\n") == 1, done.stderr
    assert "refusing to touch it" in done.stderr
    assert notes.read_text() == "my notes\n" * 2000


def test_merge_into_one_of_its_inputs_is_refused_with_exit_2(tmp_path):
    a, b = _per_rank_files(tmp_path, [(0, "nodeA"), (1, "nodeB")])
    before = a.read_bytes()
    done = run_cli("merge", str(tmp_path / "*.duckdb"), "--into", str(a))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert a.read_bytes() == before


def test_merge_of_a_missing_or_damaged_input_is_one_line_and_leaves_no_output(tmp_path):
    a, _ = _per_rank_files(tmp_path, [(0, "nodeA"), (1, "nodeB")])
    out = tmp_path / "out.duckdb"
    missing = run_cli("merge", str(a), str(tmp_path / "nope.duckdb"), "--into", str(out))
    assert missing.returncode == 4 and missing.stderr.count("\n") == 1, missing.stderr
    damaged = tmp_path / "damaged.duckdb"
    damaged.write_bytes(a.read_bytes()[:5000])
    bad = run_cli("merge", str(a), str(damaged), "--into", str(out))
    assert bad.returncode == 4 and bad.stderr.count("\n") == 1, bad.stderr
    assert not out.exists()


def test_merge_renumbers_accelerator_parts_and_tpus_across_nodes_and_prefixes_the_rest(tmp_path):
    extra = [
        ("nvml", "gpu1/mig0", "gpu.memory.used"),
        ("tpu", "tpu0", "tpu.duty_cycle"),
        ("tpu", "tpu0/core1", "tpu.duty_cycle"),
        ("process", "4242", "process.cpu.user"),
    ]
    a, b = _per_rank_files(tmp_path, [(0, "nodeA"), (1, "nodeB")], extra=extra, seconds=5)
    out = tmp_path / "job.duckdb"
    assert run_cli("merge", str(a), str(b), "--into", str(out)).returncode == 0
    names = {e for (e,) in query(out, "SELECT DISTINCT entity FROM samples")}
    assert names == {
        "rank0", "rank1", "gpu0", "gpu1", "gpu2", "gpu3", "gpu1/mig0", "gpu3/mig0",
        "tpu0", "tpu0/core1", "tpu1", "tpu1/core1", "nodeA/host", "nodeB/host",
        "nodeA/4242", "nodeB/4242",
    }  # fmt: skip
