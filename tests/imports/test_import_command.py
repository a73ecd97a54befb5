"""``accelwatch import``: columns recognised by their usual names, flags for the rest, one
line and exit 2 for what it cannot read, the trace's own time axis kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.analysis.trace_columns import recognise
from agent.app.cli import main
from agent.errors import UsageError
from agent.store import connect
from tests.imports.traces import step_times, sync_op_trace, write_table

DATA = Path(__file__).resolve().parents[1] / "data" / "alibaba-pai-minibatch"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_both_alibaba_traces_import_with_no_flags(tmp_path, capsys):
    for job in (2, 3):
        db = tmp_path / f"job{job}.duckdb"
        rc, out, err = run_cli(
            capsys,
            "import",
            str(DATA / f"job_{job}_norm.csv"),
            "--run",
            f"job{job}",
            "--db",
            str(db),
        )
        assert rc == 0, err
        assert "rank=worker, time=time, duration=batch_time_norm" in out
        assert "of 10 ranks" in out
        con = connect(db, read_only=True)
        try:
            mode, started, ended = con.execute(
                "SELECT mode, epoch(started), epoch(ended) FROM runs"
            ).fetchone()
            ranks = con.execute(
                "SELECT count(DISTINCT entity) FROM samples WHERE metric = 'step.time'"
            ).fetchone()[0]
        finally:
            con.close()
        assert mode == "imported" and started == 0.0  # the trace's own axis: t = 0 at epoch 0
        assert 2480 <= ended <= 2487 and ranks == 10


def test_unrecognised_columns_are_one_line_listing_them_with_rc_2(tmp_path, capsys):
    csv = tmp_path / "odd.csv"
    csv.write_text("who,when,how_long\n0,1,0.5\n1,1,0.6\n")
    rc, out, err = run_cli(
        capsys, "import", str(csv), "--run", "odd", "--db", str(tmp_path / "o.duckdb")
    )
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("accelwatch: error: cannot tell the rank")
    assert "(columns: who, when, how_long)" in err and "--rank-col" in err
    assert not (tmp_path / "o.duckdb").exists()  # nothing left behind


def _runs(db: Path) -> int:
    con = connect(db, read_only=True)
    try:
        return con.execute("SELECT count(*) FROM runs").fetchone()[0]
    finally:
        con.close()


def test_flags_name_the_columns_it_cannot_tell(tmp_path, capsys):
    csv = tmp_path / "odd.csv"
    csv.write_text(
        "who,when,how_long\n" + "".join(f"{r},{t},0.5\n" for t in range(5) for r in range(3))
    )
    db = tmp_path / "o.duckdb"
    rc, out, err = run_cli(
        capsys, "import", str(csv), "--run", "odd", "--db", str(db),
        "--rank-col", "who", "--time-col", "when", "--duration-col", "how_long",
    )  # fmt: skip
    assert rc == 0, err
    assert "15 step times of 3 ranks" in out
    rc, _, err = run_cli(
        capsys, "import", str(csv), "--run", "odd2", "--db", str(db), "--rank-col", "nope"
    )
    assert rc == 2 and "has no column 'nope' for --rank-col" in err


def test_a_file_it_cannot_read_is_one_line_with_rc_2(tmp_path, capsys):
    db = str(tmp_path / "x.duckdb")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not a parquet file at all")
    for argv, expected in (
        ([str(bad)], f"cannot read {bad}"),
        ([str(tmp_path / "missing.csv")], "no trace file at"),
        ([str(tmp_path / "trace.xlsx")], "no trace file at"),
    ):
        rc, out, err = run_cli(capsys, "import", *argv, "--run", "x", "--db", db)
        assert rc == 2 and out == "" and err.count("\n") == 1 and expected in err, err
    odd = tmp_path / "trace.xlsx"
    odd.write_text("x")
    rc, _, err = run_cli(capsys, "import", str(odd), "--run", "x", "--db", db)
    assert rc == 2 and "cannot tell the format" in err


def test_parquet_and_json_lines_with_unit_suffixes(tmp_path, capsys):
    cols = step_times(ranks=4, seconds=300, every=10)
    ms = {
        "worker_id": cols["rank"],
        "timestamp": cols["time"],
        "step_time_ms": cols["step_time"] * 1000,
    }
    for path in (tmp_path / "t.parquet", tmp_path / "t.jsonl"):
        write_table(path, ms)
        db = tmp_path / f"{path.suffix[1:]}.duckdb"
        rc, out, err = run_cli(capsys, "import", str(path), "--run", "t", "--db", str(db), "--json")
        assert rc == 0, err
        got = json.loads(out)
        assert got["ranks"] == 4 and got["step_times"] == 120 and got["time_axis"] == "trace"
        assert "duration=step_time_ms (x0.001)" in got["columns"]
        con = connect(db, read_only=True)
        try:
            mean = con.execute(
                "SELECT avg(value) FROM samples WHERE metric = 'step.time'"
            ).fetchone()[0]
        finally:
            con.close()
        assert mean == pytest.approx(0.5, rel=0.02)  # milliseconds became seconds


def test_one_file_per_rank_takes_the_rank_from_the_file_name(tmp_path, capsys):
    files = []
    for rank in range(3):
        path = tmp_path / f"rank{rank + 4}.csv"
        path.write_text("step,step_time\n" + "".join(f"{s},0.5\n" for s in range(10)))
        files.append(str(path))
    db = tmp_path / "f.duckdb"
    rc, out, err = run_cli(capsys, "import", *files, "--run", "f", "--db", str(db))
    assert rc == 0, err
    con = connect(db, read_only=True)
    try:
        rows = con.execute(
            "SELECT entity, count(*), max(epoch(ts)) FROM samples WHERE metric = 'step.time' "
            "GROUP BY 1 ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    # steps without times follow one another: step 9 starts after nine 0.5 s steps
    assert rows == [("rank4", 10, 4.5), ("rank5", 10, 4.5), ("rank6", 10, 4.5)]


def test_epoch_timestamps_become_seconds_from_the_trace_start(tmp_path, capsys):
    cols = step_times(ranks=3, seconds=100, every=10)
    t0 = 1_750_000_000_000  # epoch milliseconds
    path = write_table(
        tmp_path / "abs.csv",
        {"rank": cols["rank"], "ts": t0 + cols["time"] * 1000, "duration": cols["step_time"]},
    )
    db = tmp_path / "a.duckdb"
    rc, out, err = run_cli(capsys, "import", str(path), "--run", "abs", "--db", str(db))
    assert rc == 0, err
    con = connect(db, read_only=True)
    try:
        started, first = con.execute(
            "SELECT epoch(started), (SELECT min(epoch(ts)) FROM samples) FROM runs"
        ).fetchone()
    finally:
        con.close()
    assert started == pytest.approx(1_750_000_010.0) and first == started


def test_the_same_name_twice_is_refused_and_nothing_is_added(tmp_path, capsys):
    db = str(tmp_path / "j.duckdb")
    csv = str(DATA / "job_2_norm.csv")
    assert run_cli(capsys, "import", csv, "--run", "job2", "--db", db)[0] == 0
    rc, _, err = run_cli(capsys, "import", csv, "--run", "job2", "--db", db)
    assert rc == 2 and "already an imported trace" in err
    assert _runs(Path(db)) == 1


def test_step_times_added_to_a_recorded_run_use_its_start(tmp_path, capsys):
    from tests.analysis.recording import T0, Recording, record

    db, run_id = record(tmp_path / "r.duckdb", Recording(None, 30))
    csv = tmp_path / "steps.csv"
    csv.write_text("rank,time,step_time\n0,1,0.5\n1,1,0.52\n2,1,0.5\n0,2,0.5\n1,2,0.51\n2,2,0.5\n")
    rc, out, err = run_cli(capsys, "import", str(csv), "--run", "cpu-only", "--db", str(db))
    assert rc == 0, err
    assert "added to recorded run cpu-only" in out
    con = connect(db, read_only=True)
    try:
        rows = con.execute(
            "SELECT entity, min(epoch(ts)) FROM samples WHERE source = 'steps' "
            "AND metric = 'step.time' GROUP BY 1 ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    assert rows == [("rank0", T0 + 1), ("rank1", T0 + 1), ("rank2", T0 + 1)]
    rc, _, err = run_cli(capsys, "import", str(csv), "--run", "cpu-only", "--db", str(db))
    assert rc == 2 and "already has step times" in err


def test_op_trace_fills_the_ops_view_and_step_times(tmp_path, capsys):
    cols, _, job_s = sync_op_trace(slow_rank=None)
    path = write_table(tmp_path / "trace-AR.parquet", cols)
    db = tmp_path / "ops.duckdb"
    rc, out, err = run_cli(capsys, "import", str(path), "--run", "ar", "--db", str(db))
    assert rc == 0, err
    assert "4320 ops" in out
    con = connect(db, read_only=True)
    try:
        ops = con.execute("SELECT count(*), count(DISTINCT rank), max(stage) FROM ops").fetchone()
        spread = con.execute(
            "SELECT max(v) / min(v) FROM (SELECT entity, avg(value) AS v FROM samples "
            "WHERE metric = 'step.time' GROUP BY entity)"
        ).fetchone()[0]
        steps = con.execute("SELECT count(*) FROM samples WHERE metric = 'step.time'").fetchone()[0]
    finally:
        con.close()
    assert ops == (4320, 8, 1) and steps == 8 * 60
    assert spread == pytest.approx(1.0, abs=1e-6)  # synchronous: every rank's step is as long


def test_ops_with_per_step_times_are_laid_end_to_end(tmp_path, capsys):
    cols, _, job_s = sync_op_trace(slow_rank=None, steps=10)
    starts = cols["start_ts"].copy()
    for step in range(10):  # restart the clock at every step, as some tracers write it
        sel = cols["step"] == step
        starts[sel] -= starts[sel].min()
    cols["start_ts"] = starts
    path = write_table(tmp_path / "rel.parquet", cols)
    db = tmp_path / "rel.duckdb"
    assert run_cli(capsys, "import", str(path), "--run", "rel", "--db", str(db))[0] == 0
    con = connect(db, read_only=True)
    try:
        last = con.execute("SELECT max(epoch(ts) + duration) FROM ops").fetchone()[0]
    finally:
        con.close()
    assert last == pytest.approx(job_s, rel=1e-6)


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["", "worker", "gpu", "time", "batch_time_norm"], "rank=worker, time=time, duration=batch_time_norm"),
        (["dp_rank", "iteration", "elapsed"], "rank=dp_rank, step=iteration, duration=elapsed"),
        (["Rank", "Step Time (ms)", "global_step"], "rank=Rank, step=global_step, duration=Step Time (ms) (x0.001)"),
        (["rank", "dp_rank", "stage", "step", "optype", "start_ts", "duration"],
         "rank=rank, step=step, time=start_ts, duration=duration, optype=optype, dp_rank=dp_rank, stage=stage"),
    ],
)  # fmt: skip
def test_usual_column_names_are_recognised(columns, expected):
    assert recognise(columns).described() == expected


def test_an_op_trace_needs_its_steps_and_times():
    with pytest.raises(UsageError, match="cannot tell the step and the time column"):
        recognise(["rank", "optype", "duration"])
