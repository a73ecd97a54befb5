"""``accelwatch compare``: side by side, and the differences that matter in words."""

from __future__ import annotations

import json

import pytest

from agent.experiments.compare import number
from tests.experiments.recordings import Recording, record
from tests.helpers import run_cli


def test_compare_calls_out_the_gone_finding_the_step_time_and_the_config_in_words(
    baseline_and_candidate,
):
    a, b = baseline_and_candidate
    done = run_cli("compare", "run-a", "run-b", "--db", str(a), "--db", str(b))
    assert done.returncode == 0, done.stderr
    said = next(line for line in done.stdout.splitlines() if "what changed:" in line)
    parts = said.split("what changed: ", 1)[1].split("; ")
    assert parts[0] == "dataloader-bound finding gone"
    assert parts[1] == "step time \u221223%"
    assert "accelerator activity 50% \u2192 93%" in parts
    assert "energy per step \u221217%" in parts
    assert parts[-1] == "lr 1e-3 \u2192 3e-4"
    assert not any("batch_size" in p or "opt" in p for p in parts)  # unchanged: not called out
    for row in ("step time p50", "step time p99", "throughput p90", "accel activity mean",
                "memory peak", "energy per step"):  # fmt: skip
        assert row in done.stdout
    assert "gone in B" in done.stdout


def test_compare_json_has_typed_percentiles_findings_and_config(baseline_and_candidate):
    a, b = baseline_and_candidate
    done = run_cli("compare", "base", "fast", "--db", str(tmp_glob(a)), "--json")
    assert done.returncode == 0, done.stderr
    c = json.loads(done.stdout)
    assert c["a"]["run_id"] == "run-a" and c["b"]["run_id"] == "run-b"
    assert c["a"]["step_time_s_p50"] == pytest.approx(0.2)
    assert c["b"]["step_time_s_p99"] == pytest.approx(0.154)
    assert c["b"]["throughput_steps_s_p50"] == pytest.approx(1 / 0.154)
    assert c["a"]["config"] == {"lr": 1e-3, "batch_size": 64}
    assert [f["rule"] for f in c["a"]["findings"]] == ["dataloader-bound"]
    assert c["b"]["findings"] == []
    kinds = [d["kind"] for d in c["differences"]]
    assert kinds[0] == "finding" and "config" in kinds
    assert c["a"]["db_path"].endswith("a.duckdb") and c["b"]["db_path"].endswith("b.duckdb")
    assert c["summary"].startswith("dataloader-bound finding gone; step time")


def tmp_glob(path):
    return path.parent / "*.duckdb"


def test_compare_of_two_alike_runs_says_no_difference_that_matters(tmp_path):
    db = record(
        tmp_path / "same.duckdb",
        Recording("x1", step_time=0.1, busy=0.9),
        Recording("x2", step_time=0.101, busy=0.91, t0=1.7e9 + 100),
    )
    done = run_cli("compare", "x1", "x2", "--db", str(db), "--json")
    assert done.returncode == 0, done.stderr
    c = json.loads(done.stdout)
    assert c["differences"] == [] and c["summary"] == "no difference that matters"
    assert c["a"]["config"] == {} and c["a"]["metrics"] == {}  # no client tables: coped with


def test_compare_names_a_new_finding_and_a_slower_tail(tmp_path):
    db = record(
        tmp_path / "tail.duckdb",
        Recording("t1", step_time=0.1),
        Recording("t2", step_time={0: 0.1, 1: 0.2}, ranks=(0, 1), t0=1.7e9 + 100,
                  findings=["straggler"], tags={"ranks": "2"}),
    )  # fmt: skip
    done = run_cli("compare", "t1", "t2", "--db", str(db), "--json")
    c = json.loads(done.stdout)
    texts = [d["text"] for d in c["differences"]]
    assert texts[0] == "new straggler finding"
    assert "step time +50%" in texts and "p99 step time +100%" in texts
    assert "tag ranks set to 2" in texts


def test_compare_of_one_run_with_itself_is_one_line_and_exit_2(baseline_and_candidate):
    a, _ = baseline_and_candidate
    done = run_cli("compare", "run-a", "base", "--db", str(a))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "same run" in done.stderr


def test_compare_of_an_unknown_run_is_one_line_and_exit_2(baseline_and_candidate):
    a, b = baseline_and_candidate
    done = run_cli("compare", "run-a", "nope", "--db", str(a), "--db", str(b))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "no run 'nope'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("value", "text"),
    [(1e-3, "1e-3"), (3e-4, "3e-4"), (2.5e-5, "2.5e-5"), (0.25, "0.25"), (128, "128"),
     (1e7, "1e7"), ("adam", "adam"), (True, "true"), ([1, 2], "[1,2]")],
)  # fmt: skip
def test_config_values_are_written_as_people_write_them(value, text):
    assert number(value) == text
