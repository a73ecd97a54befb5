"""The tracking tables: schema 3 added to older files, readers coping with files without them."""

from __future__ import annotations

import duckdb

from agent.model import Batch
from agent.store import SCHEMA_VERSION, Store, connect
from agent.tracking.tables import metric_columns, metric_series, run_settings, setting_columns


def _v2_file(path) -> None:
    """A schema-2 database as accelwatch wrote it before tracking existed."""
    from agent import store

    con = duckdb.connect(str(path))
    con.execute(store._SCHEMA_V1)
    con.execute(store._V1_RUNS_VIEW)
    con.execute(store._SCHEMA_V2)
    con.execute("INSERT INTO accelwatch_meta VALUES ('schema_version', '2')")
    con.close()


def test_a_schema_2_file_gains_the_tracking_views_when_a_writer_opens_it(tmp_path):
    path = tmp_path / "old.duckdb"
    _v2_file(path)
    ro = connect(path, read_only=True)  # a reader does not migrate: the readers cope
    assert run_settings(ro, "r", "run_config") == {} and metric_series(ro, "r") == {}
    ro.close()
    rw = connect(path)
    version = rw.execute("SELECT value FROM accelwatch_meta WHERE key = 'schema_version'")
    assert int(version.fetchone()[0]) == SCHEMA_VERSION >= 3
    assert rw.execute("SELECT count(*) FROM train_metrics").fetchone() == (0,)
    rw.close()


def test_records_are_written_with_their_tick_and_read_back(tmp_path):
    store = Store(tmp_path / "t.duckdb")
    try:
        records = {
            "train_metrics": metric_columns(
                [(100.0, 0, 1, "loss", 2.0), (100.5, 1, None, "loss", 3.0)]
            ),
            "run_config": setting_columns(
                [
                    (100.0, "config", 0, "lr", "0.1"),
                    (101.0, "config", 0, "lr", "0.2"),
                    (100.0, "tag", 0, "model", '"mlp"'),
                ]
            ),
        }
        batch = Batch("steps", 101.0, ["rank0"], ["step.count"], [1.0], records=records)
        assert store.write_ticks([("run1", [batch])]) == 1  # samples; records beside them
        con = store.con
        assert metric_series(con, "run1") == {(0, "loss"): [(1, 2.0)], (1, "loss"): [(None, 3.0)]}
        assert run_settings(con, "run1", "run_config") == {"lr": 0.2}  # the latest value
        assert run_settings(con, "run1", "run_tags") == {"model": "mlp"}
        assert run_settings(con, "run1", "samples") == {}  # only the two settings views
    finally:
        store.close()
