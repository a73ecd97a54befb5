"""The experiment commands over real recordings of a real training script using the client:
two per-rank runs of one torchrun-style job, merged; two experiments, compared."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from tests.helpers import query, run_cli

TRAIN = textwrap.dedent(
    """
    import sys, time
    import accelwatch
    lr, step_s = float(sys.argv[1]), float(sys.argv[2])
    accelwatch.config({"lr": lr, "batch_size": 64})
    accelwatch.tag(team="nlp")
    for i in range(40):
        time.sleep(step_s)
        accelwatch.log(loss=3.0 - i * lr * 10)
        accelwatch.step()
    accelwatch.finish()
    """
)


def _record(tmp_path, name, *, lr, step_s, env=None):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    db = tmp_path / f"{name}.duckdb"
    done = run_cli(
        "run", "--simulate", "healthy", "--headless", "--interval", "0.2", "--db", str(db),
        "--name", name, "--", sys.executable, str(script), str(lr), str(step_s),
        timeout=120, env=env or {},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return db


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    job = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "2"}
    return [
        _record(tmp, f"rank{r}", lr=1e-3, step_s=0.05 * (r + 1),
                env={**job, "RANK": str(r), "LOCAL_RANK": str(r)})
        for r in range(2)
    ]  # fmt: skip


def test_merge_of_two_real_per_rank_recordings_keeps_steps_metrics_and_config(two_ranks, tmp_path):
    out = tmp_path / "job.duckdb"
    done = run_cli("merge", *map(str, two_ranks), "--into", str(out), "--json")
    assert done.returncode == 0, done.stderr
    (merged,) = json.loads(done.stdout)
    assert merged["job"] == "torch:10.0.0.1:29500/2" and merged["ranks"] == [0, 1]
    steps = dict(query(out, "SELECT entity, max(value) FROM samples WHERE metric = 'step.count' "
                            "GROUP BY entity"))  # fmt: skip
    assert steps == {"rank0": 40, "rank1": 40}
    ranks = query(out, "SELECT rank, count(*) FROM train_metrics WHERE name = 'loss' GROUP BY ALL "
                       "ORDER BY 1")  # fmt: skip
    assert ranks == [(0, 40), (1, 40)]
    assert query(out, "SELECT key, value FROM run_config ORDER BY key") == [
        ("batch_size", "64"), ("lr", "0.001")]  # fmt: skip
    gpus = {e for (e,) in query(out, "SELECT DISTINCT entity FROM samples WHERE source = 'nvml' "
                                     "AND entity NOT LIKE '%/%'")}  # fmt: skip
    assert gpus == {f"gpu{i}" for i in range(8)}  # one node: its eight GPUs, once
    runs = run_cli("runs", "--db", str(out), "--json")
    (run,) = json.loads(runs.stdout)
    assert run["steps"] == 40 and run["tags"]["team"] == "nlp" and run["mode"] == "merged"


def test_compare_of_two_real_experiments_calls_out_step_time_loss_and_lr(tmp_path):
    a = _record(tmp_path, "base", lr=1e-3, step_s=0.1)
    b = _record(tmp_path, "tuned", lr=3e-4, step_s=0.05)
    done = run_cli("compare", "base", "tuned", "--db", str(tmp_path / "*.duckdb"), "--json")
    assert done.returncode == 0, done.stderr
    c = json.loads(done.stdout)
    texts = [d["text"] for d in c["differences"]]
    step = next(d for d in c["differences"] if d["kind"] == "step_time")
    assert step["change"] < -0.25 and step["text"].startswith("step time \u2212")
    assert "lr 1e-3 \u2192 3e-4" in texts
    assert any(t.startswith("final loss ") for t in texts)
    assert c["a"]["steps"] == c["b"]["steps"] == 40
    assert c["a"]["config"]["lr"] == 1e-3 and c["a"]["tags"]["team"] == "nlp"
    assert str(a) != str(b)
