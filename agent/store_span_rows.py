"""Schema 6: each series' values stored divided by a power of two, behind the
``sample_spans(series_id, tick, value)`` view that every reader keeps using.

Whole-number series whose values are multiples of a power of two (NVLink and PCIe byte
counters and rates, which the driver counts in KiB: multiples of 1,024; page-sized memory
figures) carry those zero bits through DuckDB's ALP, which strips decimal factors, not
binary ones. Stored divided by that power (``scale``, per series and insert, run-length
encoded: a few bytes a series), ``value * scale`` gives back the original bit for bit: a
power of two only moves the exponent. A 10-minute recording of 8 simulated H100s (870 k
values, 32 KiB blocks): the file 92 -> 77 blocks (docs/benchmarks.md, "Schema 6").

Storing ``pos``/``base`` instead of ``tick`` (``tick = pos - base``) saved 3 blocks more and
was not kept: a scan of ``sample_values`` then joins the ticks on a computed key, without
the tick column's zone maps, ~40 % slower at 24 h.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.tables import has_table

#: The physical table of schema 6's spans.
SPAN_ROWS_TABLE = "sample_span_rows"
SPAN_ROWS_COLUMNS = "series_id, tick, value, scale"
SCHEMA_V6_TABLE = f"""
CREATE TABLE IF NOT EXISTS {SPAN_ROWS_TABLE} (
    series_id INTEGER, tick INTEGER, value DOUBLE, scale DOUBLE);
"""
#: Schema 5's table of spans, renamed when a file that holds rows in it is upgraded: its rows
#: are read as they are (no rewrite of a long file at open), through the same view.
V5_SPANS_TABLE = "sample_spans_v5"
_READ_ROWS = f"SELECT series_id, tick, value * scale AS value FROM {SPAN_ROWS_TABLE}"
#: Whole numbers below this are exact in a double (and in an int64 on the way).
_EXACT = 2.0**53
#: ``k`` of a zero value: no constraint on its series' power of two.
_NO_BITS = 64
#: The largest power of two a series is divided by (a whole number below 2**53 has at most 52
#: factors of 2).
_MAX_BITS = 52
#: A series is divided by the largest power of two that leaves at least this share of its
#: values whole multiples of it.
WHOLE_SHARE = 0.9


def has_span_rows(con: Any) -> bool:
    """Whether a database stores its spans as schema 6's rows."""
    return has_table(con, SPAN_ROWS_TABLE)


def spans_view(*, with_v5: bool) -> str:
    """``sample_spans`` over schema 6's rows (and a schema-5 file's kept rows)."""
    union = f" UNION ALL SELECT series_id, tick, value FROM {V5_SPANS_TABLE}" if with_v5 else ""
    return f"CREATE OR REPLACE VIEW sample_spans AS {_READ_ROWS}{union};"


def apply_v6_rows(con: Any) -> None:
    """Upgrade a schema-5 file (in the caller's transaction): its spans' table becomes
    :data:`V5_SPANS_TABLE` if it holds rows (dropped if empty), the new rows' table is
    created and ``sample_spans`` becomes the view over both. ``sample_values`` and
    ``samples`` read ``sample_spans`` by name and stay as they are."""
    (kept,) = con.execute("SELECT count(*) FROM sample_spans").fetchall()[0]
    if kept:
        con.execute(f"ALTER TABLE sample_spans RENAME TO {V5_SPANS_TABLE}")
    else:
        con.execute("DROP TABLE sample_spans")
    con.execute(SCHEMA_V6_TABLE)
    con.execute(spans_view(with_v5=bool(kept)))


def stored_values(fetched: Any) -> np.ndarray:
    """The value column as DuckDB's ``fetchnumpy`` returns it, as doubles: a NULL (DuckDB
    stores a NaN from NumPy as NULL) is NaN again, never the 0.0 under its mask; written
    back from NumPy, it is NULL again."""
    return np.ma.filled(np.ma.asarray(fetched, dtype=np.float64), np.nan)


def span_columns(series_id: np.ndarray, tick: np.ndarray, value: np.ndarray) -> dict[str, Any]:
    """The stored columns of rows already in span order (each series' rows together): the
    ids and ticks as they are, and each series' values divided by ``scale``: the largest power of two that leaves at least :data:`WHOLE_SHARE` of them
    whole (1.0 for most series). The rest (a rate over a jittered interval) are divided too,
    exactly, and cost ALP one exception each; a series where any division would not give
    its value back bit for bit (a subnormal result) keeps 1.0."""
    n = len(series_id)
    values = np.asarray(value, dtype=np.float64)
    scale = np.ones(n, dtype=np.float64)
    if n:
        starts = np.flatnonzero(np.r_[True, series_id[1:] != series_id[:-1]])
        lengths = np.diff(np.r_[starts, n])
        per_series = _series_bits(_power_of_two_bits(values), starts, lengths)
        if per_series.any():
            scale = np.ldexp(1.0, np.repeat(per_series, lengths).astype(np.int32))
            stored = values / scale
            wrong = (stored * scale).view(np.int64) != values.view(np.int64)
            if wrong.any():  # whole series back to 1.0
                bad = np.repeat(np.add.reduceat(wrong, starts) > 0, lengths)
                scale = np.where(bad, 1.0, scale)
                stored = np.where(bad, values, stored)
            values = stored
    return {
        "series_id": np.asarray(series_id, dtype=np.int32),
        "tick": np.asarray(tick, dtype=np.int32),
        "value": values,
        "scale": scale,
    }


def _series_bits(bits: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per series, the largest ``k`` such that at least :data:`WHOLE_SHARE` of its values are
    whole multiples of ``2**k`` (zero counts as one of any), capped by its nonzero values'
    own (a series of zeros: 0)."""
    width = _MAX_BITS + 2
    rows = np.repeat(np.arange(len(starts)) * width, lengths)
    capped = np.minimum(bits, _MAX_BITS + 1)
    counts = np.bincount(rows + capped, minlength=len(starts) * width).reshape(-1, width)
    at_least = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]  # [s, k]: values with bits >= k
    enough = at_least[:, : _MAX_BITS + 1] >= np.ceil(WHOLE_SHARE * lengths)[:, None]
    k = _MAX_BITS - np.argmax(enough[:, ::-1], axis=1)  # the largest k that is enough
    nonzero_bits = np.where(bits > _MAX_BITS, -1, bits)
    top = np.maximum.reduceat(nonzero_bits, starts)
    return np.clip(np.minimum(k, top), 0, None)


def _power_of_two_bits(values: np.ndarray) -> np.ndarray:
    """Per value, how many times 2 divides it as a whole number: 0 for a value that is not
    one (or too big to be exact), :data:`_NO_BITS` for zero."""
    magnitude = np.abs(values)
    with np.errstate(invalid="ignore"):
        whole = (magnitude < _EXACT) & (values == np.trunc(values))  # False for NaN, inf
    ints = np.where(whole, magnitude, 0.0).astype(np.int64)
    lowest = (ints & -ints).astype(np.float64)  # the lowest set bit (a power of two), 0 for 0
    exponent = (lowest.view(np.int64) >> 52) - 1023  # of a power of two: its log2
    return np.where(lowest > 0, exponent, np.where(whole, _NO_BITS, 0))


def insert_span_rows(cursor: Any, rows: dict[str, Any], *, into: str = "") -> None:
    """Append rows made by :func:`span_columns` (``into``: a schema prefix, ``db.main.``)."""
    span_rows = rows  # noqa: F841 - read by DuckDB's replacement scan
    cursor.execute(f"INSERT INTO {into}{SPAN_ROWS_TABLE} SELECT {SPAN_ROWS_COLUMNS} FROM span_rows")
