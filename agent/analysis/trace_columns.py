"""Which column of a foreign step or op trace is the rank, the step, the time, the duration.

Traces written by other tools (training logs, cluster traces, straggler studies) name their
columns in a handful of usual ways: ``rank``/``worker``/``dp_rank``, ``step``/``iteration``,
``time``/``start_ts``/``timestamp``, ``duration``/``step_time``/``batch_time``... A unit suffix
(``_ms``, ``_us``, ``(s)``) says how to get seconds. Recognition is a pure function of the
column names, so it is tested without files; the reader (:mod:`agent.analysis.trace_read`) applies it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agent.errors import UsageError

#: Unit suffixes of a column name and the factor that turns the column into seconds.
UNIT_SUFFIXES: Mapping[str, float] = {
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "seconds": 1.0,
    "ms": 1e-3,
    "msec": 1e-3,
    "millis": 1e-3,
    "us": 1e-6,
    "usec": 1e-6,
    "micros": 1e-6,
    "ns": 1e-9,
    "nanos": 1e-9,
}
TIME_UNITS: Mapping[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}

#: Usual names per role, most specific first; the first one present wins.
ROLE_NAMES: Mapping[str, tuple[str, ...]] = {
    "optype": ("optype", "op_type", "operation", "op_name", "opname", "op"),
    "rank": (
        "rank",
        "global_rank",
        "rank_id",
        "worker",
        "worker_id",
        "worker_rank",
        "workerid",
        "node_rank",
    ),
    "dp_rank": ("dp_rank", "data_parallel_rank", "dp"),
    "stage": ("stage", "pp_rank", "pp_stage", "pipeline_stage", "pipeline_rank"),
    "tp_rank": ("tp_rank", "tensor_parallel_rank"),
    "step": (
        "step",
        "global_step",
        "train_step",
        "step_id",
        "iteration",
        "iter",
        "iteration_id",
        "batch_idx",
        "steps",
    ),
    "time": (
        "start_ts",
        "timestamp",
        "time",
        "ts",
        "start_time",
        "start",
        "wall_time",
        "walltime",
        "relative_time",
        "t",
    ),
    "duration": (
        "duration",
        "dur",
        "step_time",
        "steptime",
        "step_duration",
        "batch_time",
        "batch_time_norm",
        "minibatch_time",
        "mini_batch_time",
        "iteration_time",
        "iter_time",
        "time_per_step",
        "elapsed",
        "elapsed_time",
        "latency",
    ),
}
#: Roles a step trace needs; an op trace needs ``optype`` as well.
REQUIRED = ("rank", "duration")
#: Columns of a rank kept as its entity attributes when constant per rank.
ATTRIBUTE_NAMES = ("gpu", "gpu_id", "node", "host", "hostname", "node_name", "pod")


@dataclass(frozen=True)
class Column:
    """A recognised column: its name in the file and the factor to seconds (time, duration)."""

    name: str
    scale: float = 1.0


@dataclass(frozen=True)
class TraceColumns:
    """The roles found in a trace's columns (None when absent)."""

    rank: Column | None = None
    duration: Column | None = None
    time: Column | None = None
    step: Column | None = None
    optype: Column | None = None
    dp_rank: Column | None = None
    stage: Column | None = None
    tp_rank: Column | None = None
    attributes: tuple[str, ...] = field(default=())

    @property
    def is_op_trace(self) -> bool:
        return self.optype is not None

    def described(self) -> str:
        """``rank=worker, time=time, duration=batch_time_norm`` (what the import used)."""
        parts = []
        for role in ("rank", "step", "time", "duration", "optype", "dp_rank", "stage"):
            col: Column | None = getattr(self, role)
            if col is not None:
                unit = "" if col.scale == 1.0 else f" (x{col.scale:g})"
                parts.append(f"{role}={col.name}{unit}")
        return ", ".join(parts)


def normalized(name: str) -> tuple[str, float | None]:
    """(base name, unit factor or None): ``"Step Time (ms)"`` -> ``("step_time", 0.001)``."""
    text = re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")
    head, sep, tail = text.rpartition("_")
    if sep and head and tail in UNIT_SUFFIXES:
        return head, UNIT_SUFFIXES[tail]
    return text, None


def recognise(
    columns: Sequence[str],
    overrides: Mapping[str, str | None] | None = None,
    *,
    source: str = "the trace",
    files_are_ranks: bool = False,
) -> TraceColumns:
    """Map roles to the trace's columns; ``overrides`` (role -> column) come from flags.

    ``files_are_ranks``: several files were given, so without a rank column each file is a
    rank. Raises :class:`UsageError` (exit 2) naming the columns found when a required role is
    missing or an override names a column the trace lacks."""
    chosen: dict[str, str] = {k: v for k, v in (overrides or {}).items() if v}
    by_base: dict[str, list[tuple[str, float | None]]] = {}
    for col in columns:
        base, unit = normalized(col)
        by_base.setdefault(base, []).append((col, unit))
    found: dict[str, Column] = {}
    taken: set[str] = set()
    for role, column in chosen.items():
        if column not in columns:
            raise UsageError(
                f"{source} has no column {column!r} for --{role.replace('_', '-')}-col "
                f"(columns: {', '.join(columns)})"
            )
        found[role] = Column(column, normalized(column)[1] or 1.0)
        taken.add(column)
    for role, names in ROLE_NAMES.items():
        if role in found:
            continue
        for name in names:
            hits = [(c, u) for c, u in by_base.get(name, []) if c not in taken]
            if hits:
                col, unit = hits[0]
                found[role] = Column(col, unit or 1.0)
                taken.add(col)
                break
    if "rank" not in found and "dp_rank" in found and "stage" not in found:
        found["rank"] = found.pop("dp_rank")  # a data-parallel-only trace: the DP rank is it
    op_trace = "optype" in found
    missing = [r for r in REQUIRED if r not in found]
    if missing[:1] == ["rank"] and ((op_trace and "stage" in found) or files_are_ranks):
        missing.pop(0)  # ranks numbered from (stage, dp_rank, tp_rank), or one file per rank
    if op_trace:  # ops are grouped into steps and laid on the time axis by their start
        missing += [r for r in ("step", "time") if r not in found]
    elif "time" not in found and "step" not in found:
        missing.append("time or step")
    if missing:
        flags = " / ".join(f"--{m.split()[0].replace('_', '-')}-col" for m in missing)
        raise UsageError(
            f"cannot tell the {' and the '.join(missing)} column of {source} "
            f"(columns: {', '.join(columns)}); name it with {flags}"
        )
    attributes = tuple(c for c in columns if normalized(c)[0] in ATTRIBUTE_NAMES and c not in taken)
    return TraceColumns(**found, attributes=attributes)
