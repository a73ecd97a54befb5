"""The writer's per-flush work: a flush of known series is one statement, the heartbeat is
written every few seconds and at the end, and a source alternating layouts reuses its ids."""

from __future__ import annotations

from agent.model import Batch, RunInfo
from agent.series import SeriesIds
from agent.store import Store, connect, list_runs
from agent.store_writer import HEARTBEAT_EVERY_S

T0 = 1_700_000_000.0
GPU = [("gpu0", "gpu.utilization"), ("gpu0", "gpu.power")]
GPU_FIELDS = [*GPU, ("gpu0", "gpu.sm.activity")]


def _batch(ts: float, labels=GPU, source: str = "nvml") -> Batch:
    return Batch(source, ts, [e for e, _ in labels], [m for _, m in labels], [0.5] * len(labels))


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _beat_row(store: Store):
    return store.cursor().execute("SELECT epoch(last_sample) FROM runs").fetchone()[0]


def _recording(tmp_path) -> tuple[Store, _Clock]:
    store = Store(tmp_path / "a.duckdb")
    clock = store._clock = _Clock()
    store.write_run(RunInfo("r", "job", 1, ["job"], "/", "h", T0, 1.0, str(store.path)))
    return store, clock


def test_heartbeat_is_written_on_the_first_flush_then_every_few_seconds(tmp_path):
    store, clock = _recording(tmp_path)
    store.write_ticks([("r", [_batch(T0)])])
    assert _beat_row(store) == T0  # the first flush beats
    clock.now += HEARTBEAT_EVERY_S / 2
    store.write_ticks([("r", [_batch(T0 + 1)])])
    assert _beat_row(store) == T0  # too soon: the samples alone
    clock.now += HEARTBEAT_EVERY_S / 2
    store.write_ticks([("r", [_batch(T0 + 2)])])
    assert _beat_row(store) == T0 + 2
    store.close()


def test_closing_brings_the_heartbeat_up_to_the_last_committed_sample(tmp_path):
    store, clock = _recording(tmp_path)
    store.write_ticks([("r", [_batch(T0)])])
    clock.now += 0.5
    store.write_ticks([("r", [_batch(T0 + 1)])])
    store.close()
    con = connect(store.path, read_only=True)
    try:
        (run,) = list_runs(con)
    finally:
        con.close()
    assert run["last_sample"].timestamp() == T0 + 1


def test_a_flush_of_known_series_needs_no_transaction(tmp_path, monkeypatch):
    store, clock = _recording(tmp_path)
    store.write_ticks([("r", [_batch(T0)])])  # new series + the first beat: one transaction
    begins: list[int] = []
    real = store._flush_con
    monkeypatch.setattr(store, "_flush_con", _CountingBegin(real, begins))
    clock.now += 0.5
    store.write_ticks([("r", [_batch(T0 + 1)])])
    assert begins == []
    clock.now += HEARTBEAT_EVERY_S
    store.write_ticks([("r", [_batch(T0 + 2)])])  # samples + the beat: one transaction
    assert begins == [1]
    monkeypatch.setattr(store, "_flush_con", real)
    rows = store.cursor().execute("SELECT count(*) FROM samples").fetchone()[0]
    store.close()
    assert rows == 3 * len(GPU)


def test_flushes_run_without_the_optimizer_and_the_writers_connection_keeps_it(tmp_path):
    store, clock = _recording(tmp_path)
    store.write_ticks([("r", [_batch(T0)])])
    setting = "SELECT current_setting('enable_optimizer')"
    assert store._flush_con.execute(setting).fetchone() == (False,)
    # the moves, the close and the post-run analysis run on the writer's own connection
    assert store.con.execute(setting).fetchone() == (True,)
    assert store.cursor().execute(setting).fetchone() == (True,)
    clock.now += HEARTBEAT_EVERY_S
    store.write_ticks([("r", [_batch(T0 + 1)])])  # samples + the beat, on the flush cursor
    assert _beat_row(store) == T0 + 1
    store.close()
    con = connect(store.path, read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM samples").fetchone() == (2 * len(GPU),)
    finally:
        con.close()


class _CountingBegin:
    def __init__(self, con, begins: list[int]) -> None:
        self._con, self._begins = con, begins

    def begin(self):
        self._begins.append(1)
        return self._con.begin()

    def __getattr__(self, name):
        return getattr(self._con, name)


def test_a_source_alternating_between_two_layouts_reuses_both_id_arrays(tmp_path):
    con = connect(tmp_path / "a.duckdb")
    series = SeriesIds()
    first, _, new = series.ids("r", [_batch(T0, GPU)], con)
    series.insert(con, "r", new)
    second, _, new = series.ids("r", [_batch(T0 + 1, GPU_FIELDS)], con)
    series.insert(con, "r", new)
    series.commit()
    again_first, _, none_new = series.ids("r", [_batch(T0 + 2, GPU)], con)
    again_second, _, _ = series.ids("r", [_batch(T0 + 3, GPU_FIELDS)], con)
    con.close()
    assert none_new is None
    assert again_first is first and again_second is second
    assert sorted(second)[:2] == sorted(first)


def test_a_ticks_rows_are_stored_by_value_and_read_back_with_their_labels(tmp_path):
    store, _ = _recording(tmp_path)
    labels = [(f"gpu{i}", "gpu.power") for i in range(6)]
    values = [500.0, 0.0, 3e11, 0.0, 1.5, 500.0]
    for t in range(3):
        tick = Batch("nvml", T0 + t, [e for e, _ in labels], [m for _, m in labels], values)
        store.write_ticks([("r", [tick])])
    con = store.cursor()
    read = con.execute("SELECT entity, value FROM samples WHERE ts = make_timestamp(?)",
                       [int(T0 * 1e6)]).fetchall()  # fmt: skip
    stored = [v for (v,) in con.execute("SELECT value FROM sample_values").fetchall()]
    store.close()
    assert sorted(read) == sorted(zip([e for e, _ in labels], values))
    assert stored == sorted(values) * 3
