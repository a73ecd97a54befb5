"""Runs every rule over a window of a run: once after the run, and repeatedly while it runs.

A rule is a pure function of query results: it gets a :class:`Context` (the connection with the
``aw_*`` frames built by :func:`agent.analysis.frame.build_frames` and a description of what
signals exist) and returns findings. Shared helpers here turn a per-bucket condition written in
SQL into episodes (islands of flagged buckets), so no rule loops over samples in Python.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import duckdb

from agent.analysis.causes import covers_job
from agent.analysis.finding import Finding, Severity, sort_findings, store_findings
from agent.analysis.frame import FrameInfo, Window, build_frames, naive_utc
from agent.analysis.thresholds import EPISODE_GAP_S, LIVE_LOOKBACK_S, MIN_EPISODE_S
from agent.runs import find_run

if TYPE_CHECKING:
    from agent.analysis.watch import Tick

__all__ = ["Rule", "analyze", "analyze_run", "find_run"]  # find_run: one lookup, in agent.runs

#: Post-run bucket sizes; the smallest that keeps a run under MAX_BUCKETS per entity.
NICE_BUCKETS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600)
MAX_BUCKETS = 3000
#: Episodes listed in a finding's evidence (the count and total duration cover all of them).
MAX_WINDOWS = 200


@dataclass(frozen=True)
class Episode:
    """Consecutive flagged buckets of one entity, with the evidence columns averaged."""

    entity: str
    start: datetime
    end: datetime
    buckets: int
    values: dict[str, Any]

    @property
    def duration_s(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass
class Context:
    """What a rule sees: a cursor with the frames, and which signals are present."""

    con: duckdb.DuckDBPyConnection
    info: FrameInfo
    live: bool = False

    def rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        cur = self.con.execute(sql, params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def min_episode_s(self, wanted: float = MIN_EPISODE_S) -> float:
        """At least ``wanted`` seconds, but never less than two buckets."""
        return max(wanted, 2 * self.info.bucket_s)

    def episodes(
        self,
        flagged_sql: str,
        evidence: Sequence[str],
        *,
        params: Sequence[Any] | dict[str, Any] = (),
        min_duration_s: float | None = None,
        gap_s: float = EPISODE_GAP_S,
    ) -> list[Episode]:
        """Islands of rows where ``flag`` holds in ``flagged_sql`` (columns entity, t, flag, ...).

        Buckets closer than ``gap_s`` join one episode; episodes shorter than
        ``min_duration_s`` are dropped; ``evidence`` columns are averaged per episode.
        """
        min_s = self.min_episode_s() if min_duration_s is None else min_duration_s
        bucket = self.info.bucket_s
        avgs = "".join(f", avg({c}) AS {c}" for c in evidence)
        sql = f"""
            WITH f AS ({flagged_sql}),
            g AS (SELECT *, t - lag(t) OVER (PARTITION BY entity ORDER BY t) AS step
                  FROM f WHERE flag),
            i AS (SELECT *, sum(CASE WHEN step IS NULL OR step > {bucket + gap_s} THEN 1 ELSE 0
                                END) OVER (PARTITION BY entity ORDER BY t) AS island FROM g)
            SELECT entity, min(t) AS t0, max(t) + {bucket} AS t1, count(*) AS buckets{avgs}
            FROM i GROUP BY entity, island
            HAVING max(t) + {bucket} - min(t) >= {min_s}
            ORDER BY entity, t0"""
        out = []
        for row in self.rows(sql, params):
            values = {c: row[c] for c in evidence}
            out.append(
                Episode(
                    row["entity"],
                    naive_utc(row["t0"]),
                    naive_utc(row["t1"]),
                    row["buckets"],
                    values,
                )
            )
        return out

    def span(self, entity: str, t0: float, t1: float) -> Episode:
        """An episode from bucket ``t0`` to the end of bucket ``t1`` (epoch seconds)."""
        return Episode(entity, naive_utc(t0), naive_utc(t1 + self.info.bucket_s), 0, {})

    def finding(
        self,
        rule: str,
        severity: Severity,
        entity: str,
        episodes: Sequence[Episode],
        summary: str,
        next_step: str,
        evidence: dict[str, Any],
        *,
        lost_fraction: float = 1.0,
    ) -> Finding:
        """One finding covering an entity's episodes; the windows go into the evidence."""
        total = sum(e.duration_s for e in episodes)
        evidence = {
            **{k: _rounded(v) for k, v in evidence.items()},
            "windows": [[e.start.isoformat(), e.end.isoformat()] for e in episodes[:MAX_WINDOWS]],
            "episodes": len(episodes),
            "duration_s": round(total, 1),
        }
        return Finding(
            rule,
            severity,
            entity,
            episodes[0].start,
            episodes[-1].end,
            summary,
            next_step,
            evidence,
            lost_s=total * max(0.0, min(1.0, lost_fraction)),
            live=self.live,
        )


def weighted(episodes: Sequence[Episode], column: str) -> float | None:
    """The duration-weighted mean of an evidence column over episodes (None if all null)."""
    values = [(e.values.get(column), e.duration_s) for e in episodes]
    pairs = [(v, w) for v, w in values if v is not None and not math.isnan(v)]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4) if abs(value) < 1e4 else round(value)
    return value


#: A rule's cheap per-tick check (see :mod:`agent.analysis.watch`): whether its condition may
#: hold at this tick. It must never say no when the SQL flag would say yes; a false yes costs
#: one SQL pass, nothing else.
Watch = Callable[["Tick"], bool]
#: When a kind can first be reported, if holding its watch for its minimum duration is not
#: enough (a leak must also have grown by 5% of capacity): ``ready(first, now)`` from the tick
#: its watch began holding and the latest one. A hint that adds a pass, never one that delays:
#: the clock's own schedule still runs.
Ready = Callable[["Tick", "Tick"], bool]
#: The entities whose condition may hold at this tick, for a rule whose SQL judges each
#: entity's own episode (a GPU's starvation): a pass is due the tick one of them has held for
#: the rule's minimum duration, with the episodes' gap tolerance, and holds again.
EntityWatch = Callable[["Tick"], Iterable[str]]


@dataclass(frozen=True)
class Rule:
    """A named detector: ``detect(context) -> findings``; ``supersedes`` hides overlapping
    findings of other rules on the same entity (a hang explains its idle GPUs).

    What the live analysis needs to schedule it, declared here so a new rule joins without
    edits to the scheduler: ``min_duration_s`` (how long its condition must hold before it
    reports; the live target is this + 10 s after the onset), ``min_episodes`` (episodes
    needed, e.g. two checkpoint stalls), ``lookback_s`` (history a live pass gives it),
    ``kind_min_duration_s`` (other minimums of some kinds of finding, by ``evidence["kind"]``),
    ``watch`` (a rule without one is checked only by the periodic full pass) and
    ``kind_watches`` (a kind whose condition its own watch times, such as a leak's growth)
    and ``kind_ready`` (when such a kind can first be reported, see :data:`Ready`);
    ``entity_watch`` (which entities may hold, see :data:`EntityWatch`); ``may_find`` (a
    cheap necessary condition of any finding, looser than a watch that is not one, such as
    "three ranks report step times": the full pass runs a rule only while its watch or this
    held within its lookback; a rule with neither runs in every full pass).
    """

    id: str
    title: str
    detect: Callable[[Context], list[Finding]]
    supersedes: tuple[str, ...] = ()
    min_duration_s: float = MIN_EPISODE_S
    min_episodes: int = 1
    lookback_s: float = LIVE_LOOKBACK_S
    kind_min_duration_s: tuple[tuple[str, float], ...] = ()
    watch: Watch | None = None
    kind_watches: tuple[tuple[str, Watch], ...] = ()
    kind_ready: tuple[tuple[str, Ready], ...] = ()
    entity_watch: EntityWatch | None = None
    may_find: Watch | None = None

    def min_duration_for(self, finding: Finding) -> float:
        """The minimum duration behind ``finding`` (its kind may need another)."""
        return dict(self.kind_min_duration_s).get(finding_kind(finding), self.min_duration_s)


def finding_kind(finding: Finding) -> str:
    """What kind of finding of its rule it is (``evidence["kind"]`` or ``["event"]``)."""
    return str(finding.evidence.get("kind", finding.evidence.get("event", "")))


def choose_bucket_s(duration_s: float, interval_s: float) -> float:
    """The smallest nice bucket at least the sampling interval that keeps <= MAX_BUCKETS."""
    for size in NICE_BUCKETS_S:
        if size >= interval_s and duration_s / size <= MAX_BUCKETS:
            return float(size)
    return float(NICE_BUCKETS_S[-1])


def analyze(
    con: duckdb.DuckDBPyConnection,
    window: Window,
    *,
    live: bool = False,
    rules: Sequence[Rule] | None = None,
    after_scan: Callable[[], None] | None = None,
) -> list[Finding]:
    """Build the frames for ``window`` and run the rules over them; ``after_scan`` is called
    once the raw samples have been read (see :func:`build_frames`)."""
    from agent.analysis.rules import ALL_RULES

    info = build_frames(con, window, after_scan=after_scan)
    if info.first is None:
        return []
    ctx = Context(con, info, live=live)
    chosen = ALL_RULES if rules is None else rules
    findings = [f for rule in chosen for f in rule.detect(ctx)]
    return sort_findings(_apply_supersedes(findings, chosen))


def finding_windows(f: Finding) -> list[tuple[datetime, datetime]]:
    """The episodes a finding covers (from its evidence), or its overall span."""
    raw = f.evidence.get("windows") or []
    spans = [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in raw]
    return spans or [(f.start, f.end or f.start)]  # an open finding has no span yet


def _overlap_s(a: list[tuple[datetime, datetime]], b: list[tuple[datetime, datetime]]) -> float:
    return sum(
        max(0.0, (min(e1, e2) - max(s1, s2)).total_seconds()) for s1, e1 in a for s2, e2 in b
    )


def _apply_supersedes(findings: list[Finding], rules: Sequence[Rule]) -> list[Finding]:
    """Drop findings mostly inside the windows of a finding that explains them."""
    hidden: dict[str, tuple[str, ...]] = {r.id: r.supersedes for r in rules if r.supersedes}
    strong = [f for f in findings if f.rule in hidden]

    def covered(f: Finding) -> bool:
        mine = finding_windows(f)
        total = sum((e - s).total_seconds() for s, e in mine) or 1e-9
        return any(
            f.rule in hidden[s.rule]
            and (s.entity == f.entity or covers_job(s.entity))
            and _overlap_s(mine, finding_windows(s)) >= 0.5 * total
            for s in strong
        )

    return [f for f in findings if not covered(f)]


def run_bounds(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[float, float]:
    """(duration in seconds, sampling interval) of a recorded run."""
    row = con.execute(
        "SELECT epoch(ended) - epoch(started), interval_s FROM runs WHERE run_id = ?", [run_id]
    ).fetchone()
    duration, interval = row if row else (None, None)
    if duration is None:  # still running or killed: fall back to the samples
        duration = con.execute(
            "SELECT epoch(max(ts)) - epoch(min(ts)) FROM samples WHERE run_id = ?", [run_id]
        ).fetchall()[0][0]  # an aggregate: always one row
    return float(duration or 0.0), float(interval or 1.0)


@contextlib.contextmanager
def post_run_resources(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """The recorder keeps DuckDB small (one thread, a few MB) beside the job; a post-run
    analysis of a long run gets every core and a reader's memory for its aggregation, then
    hands them back."""
    from agent.store import READER_DB_MEMORY

    settings = "SELECT current_setting('threads'), current_setting('memory_limit')"
    before = con.execute(settings).fetchall()[0]
    con.execute(f"RESET threads; SET memory_limit = '{READER_DB_MEMORY}'")
    if con.execute(settings).fetchall()[0] == before:  # a reader already has them
        yield
        return
    try:
        yield
    finally:
        con.execute(f"SET threads = {int(before[0])}; SET memory_limit = '{before[1]}'")


def analyze_run(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    *,
    store: bool = True,
    after_scan: Callable[[], None] | None = None,
) -> list[Finding]:
    """Analyse a whole run; store the findings (``live=false``, replacing earlier ones).
    ``after_scan``: see :func:`analyze`."""
    duration, interval = run_bounds(con, run_id)
    window = Window(run_id, choose_bucket_s(duration, interval))
    with post_run_resources(con):
        findings = analyze(con, window, after_scan=after_scan)
    if store:
        store_findings(con, run_id, findings, live=False)
    return findings
