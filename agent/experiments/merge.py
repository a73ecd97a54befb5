"""``accelwatch merge DB... --into DB``: the per-rank or per-node recordings of one job become
one run, with the ranks as entities, analysed as one.

Which runs are one job comes from each run's identity (:mod:`agent.experiments.identity`):
the same Slurm job (and step), or the same torchrun rendezvous (``MASTER_ADDR:MASTER_PORT``
and world size), with overlapping times. Runs that record ranks but no job id are one job when
their names match and their times overlap. Any other run is copied unchanged.

Entity names in a merged run (docs/readers.md, "Merged runs"):

* ranks keep their names (``rank3``: global ranks are unique within a job); a per-rank run
  whose only rank entity is ``rank0`` while its identity says rank 3 becomes ``rank3``;
* what belongs to a node (accelerators, host, CPUs, disks, ports...) is taken once per node,
  from that node's lowest rank: every per-rank agent of a node sees the same devices;
* on a job of several nodes, accelerators are renumbered across nodes in node order (node
  A's ``gpu0..7`` stay ``gpu0..7``, node B's become ``gpu8..15``), so they stay accelerators
  for every rule; their ``entities`` attrs keep ``node`` and ``node_entity`` (the original
  name). Other node entities and processes are prefixed by the node: ``nodeB/host``,
  ``nodeB/cpu3``, ``nodeB/4242``.

The inputs are attached read-only and never modified; the output is written through the
store's writer (a new file is 0600; an existing file must be an accelwatch database, and a
merged run already in it is skipped). The merged run is analysed once written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.catalog.roles import ENTITY_KINDS
from agent.errors import UsageError
from agent.experiments.identity import run_identity
from agent.model import Batch, Event, RunInfo
from agent.registry import default_registry
from agent.runs import LocalReadConnection, json_object, list_runs, stored_findings

#: Two runs of one job overlap in time, give or take this much (clock skew between nodes).
OVERLAP_SLACK_S = 60.0
#: Samples copied per write (bounded memory whatever the run's size).
CHUNK_ROWS = 500_000
#: Per-node kinds renumbered across nodes (an accelerator and what is named after it).
RENUMBERED_KINDS = ("accelerator", "accelerator.part", "link", "accelerator.process")
PER_PROCESS_KINDS = ("process",)


@dataclass
class Member:
    run: dict[str, Any]
    ident: dict[str, Any]

    @property
    def run_id(self) -> str:
        return str(self.run["run_id"])

    @property
    def node(self) -> str:
        return str(self.ident.get("node") or self.run.get("host") or "node")

    @property
    def rank(self) -> int:
        rank = self.ident.get("rank")
        return rank if isinstance(rank, int) else 1 << 30

    def span(self) -> tuple[float, float]:
        from agent.reader import epoch_seconds

        start = epoch_seconds(self.run.get("started")) or 0.0
        end = epoch_seconds(self.run.get("ended")) or epoch_seconds(self.run.get("last_sample"))
        return start, end if end is not None else float("inf")


@dataclass
class Job:
    key: str | None
    members: list[Member] = field(default_factory=list)

    @property
    def merged(self) -> bool:
        return self.key is not None and len(self.members) > 1


def group_jobs(runs: Sequence[dict[str, Any]]) -> list[Job]:
    """Runs of one job together (same job key, overlapping times); others alone."""
    keyed: dict[str, list[Member]] = {}
    jobs: list[Job] = []
    for r in runs:
        m = Member(r, run_identity(r.get("env") or {}, str(r.get("host") or "")))
        key = m.ident.get("job")
        if key is None and m.ident.get("rank") is not None:
            key = f"name:{r.get('name')}/{m.ident.get('world_size') or ''}"
        if key is None:
            jobs.append(Job(None, [m]))
        else:
            keyed.setdefault(key, []).append(m)
    for key, members in keyed.items():
        members.sort(key=lambda m: m.span()[0])
        current: Job | None = None
        end = float("-inf")
        for m in members:
            start, stop = m.span()
            if current is None or start > end + OVERLAP_SLACK_S:
                current = Job(key)
                jobs.append(current)
                end = stop
            current.members.append(m)
            end = max(end, stop)
    for job in jobs:
        job.members.sort(key=lambda m: (m.rank, m.run_id))
        if len(job.members) == 1:
            job.key = job.key if job.key and job.key.startswith(("slurm:", "torch:")) else None
    return jobs


def merged_run_id(job: Job) -> str:
    digest = hashlib.sha1("\n".join(sorted(m.run_id for m in job.members)).encode()).hexdigest()
    start = min(m.span()[0] for m in job.members)
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(start))}-job-{digest[:6]}"


def _kinds() -> list[tuple[str, str, re.Pattern[str]]]:
    registry = default_registry()
    return [
        (kind, source, re.compile(pattern))
        for kind in ENTITY_KINDS
        for source, pattern in registry.entities_of_kind(kind)
    ]


def _kind_of(kinds: list[tuple[str, str, re.Pattern[str]]], source: str, entity: str):
    for kind, src, pattern in kinds:
        if src == source:
            m = pattern.fullmatch(entity)
            if m is not None:
                return kind, m
    return None, None


def _index_span(m: re.Match[str] | None, entity: str) -> tuple[int, int] | None:
    """Where the device index is in an accelerator's (or its part's) name: the pattern's first
    group (``gpu(?P<gpu>[0-9]+)``), else the name's first run of digits (``tpu3/core1``)."""
    if m is None:
        return None
    if m.groups() and m.group(1) is not None and m.group(1).isdigit():
        return m.span(1)
    digits = re.search(r"[0-9]+", entity)
    return None if digits is None else digits.span()


def entity_plan(con: Any, job: Job) -> list[tuple[str, str, str, str, dict[str, Any]]]:
    """(input run id, source, entity, merged entity, extra attrs) of every entity kept."""
    kinds = _kinds()
    nodes = list(dict.fromkeys(m.node for m in job.members))
    primary = {n: next(m for m in job.members if m.node == n) for n in nodes}
    multi = len(nodes) > 1
    ids = [m.run_id for m in job.members]
    marks = ", ".join("?" for _ in ids)
    present = con.execute(
        f"SELECT DISTINCT run_id, source, entity FROM (SELECT run_id, source, entity FROM "
        f"samples WHERE run_id IN ({marks}) UNION ALL SELECT run_id, source, entity FROM "
        f"entities WHERE run_id IN ({marks})) ORDER BY run_id, source, entity",
        [*ids, *ids],
    ).fetchall()
    by_run: dict[str, list[tuple[str, str]]] = {}
    for run_id, source, entity in present:
        by_run.setdefault(run_id, []).append((source, entity))
    offsets: dict[tuple[str, str], int] = {}  # (node, source) → first global index
    next_index: dict[str, int] = {}
    for node in nodes:
        for source, entity in by_run.get(primary[node].run_id, []):
            kind, m = _kind_of(kinds, source, entity)
            span = _index_span(m, entity) if kind == "accelerator" else None
            if span is not None:
                offsets.setdefault((node, source), next_index.get(source, 0))
                top = offsets[(node, source)] + int(entity[span[0] : span[1]]) + 1
                next_index[source] = max(next_index.get(source, 0), top)
    plan = []
    seen: set[tuple[str, str]] = set()
    for member in job.members:
        ranks = [e for s, e in by_run.get(member.run_id, []) if _kind_of(kinds, s, e)[0] == "rank"]
        for source, entity in by_run.get(member.run_id, []):
            kind, m = _kind_of(kinds, source, entity)
            extra: dict[str, Any] = {"node": member.node, "merged_from": member.run_id}
            new = entity
            if kind == "rank":
                if ranks == ["rank0"] and member.rank not in (0, 1 << 30):
                    new = re.sub(r"[0-9]+$", str(member.rank), entity)
            elif kind in PER_PROCESS_KINDS:
                new = f"{member.node}/{entity}" if multi else entity
            elif member is not primary[member.node]:
                continue  # a node's devices and host, recorded again by another of its ranks
            elif multi and kind in RENUMBERED_KINDS and (span := _index_span(m, entity)):
                index = offsets.get((member.node, source), 0) + int(entity[span[0] : span[1]])
                new = entity[: span[0]] + str(index) + entity[span[1] :]
                if m is None or not m.re.fullmatch(new):  # still of its kind, or prefixed
                    new = f"{member.node}/{entity}"
            elif multi:
                new = f"{member.node}/{entity}"
            if new != entity:
                extra["node_entity"] = entity
            if (source, new) in seen:
                continue
            seen.add((source, new))
            plan.append((member.run_id, source, entity, new, extra))
    return plan


def _merged_info(job: Job, run_id: str, out: Path) -> RunInfo:
    from agent.reader import epoch_seconds

    first = job.members[0].run
    envs = [m.run.get("env") or {} for m in job.members]
    common = {k: v for k, v in envs[0].items() if all(e.get(k) == v for e in envs[1:])}
    tags: dict[str, str] = {}
    for m in reversed(job.members):
        tags.update(m.run.get("tags") or {})
    spans = [m.span() for m in job.members]
    ended = max(b for _, b in spans)
    statuses = {str(m.run.get("recorded_status") or m.run.get("status")) for m in job.members}
    codes = [m.run.get("exit_code") for m in job.members if m.run.get("exit_code") is not None]
    names = {m.run.get("name") for m in job.members}
    nodes = list(dict.fromkeys(m.node for m in job.members))
    return RunInfo(
        run_id=run_id,
        name=str(first.get("name") if len(names) == 1 else f"{first.get('name')} (merged)"),
        pid=first.get("pid"),
        cmdline=list(first.get("cmdline") or []),
        cwd=str(first.get("cwd") or ""),
        host=",".join(nodes),
        started=min(a for a, _ in spans),
        interval=min(float(m.run.get("interval_s") or 1.0) for m in job.members),
        db_path=str(out),
        tags=tags,
        env=common,
        mode="merged",
        simulated=any(bool(m.run.get("simulated")) for m in job.members),
        scenario=first.get("scenario"),
        ended=ended if ended != float("inf") else epoch_seconds(first.get("last_sample")),
        exit_code=next((c for c in codes if c), codes[0] if codes else None),
        status=statuses.pop() if len(statuses) == 1 and "running" not in statuses else "incomplete",
    )


def tick_batches(cols: dict[str, np.ndarray]) -> list[Batch]:
    """Rows sorted by (ts, source) as the store takes them: one batch per source and tick."""
    ts = np.asarray(cols["ts"]).astype("datetime64[us]").astype(np.int64)
    source = np.asarray(cols["source"], dtype=object)
    if not len(ts):
        return []
    cut = np.flatnonzero((ts[1:] != ts[:-1]) | (source[1:] != source[:-1])) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [len(ts)]])
    entity = np.asarray(cols["entity"], dtype=object)
    metric = np.asarray(cols["metric"], dtype=object)
    value = np.asarray(cols["value"], dtype=np.float64)
    return [
        Batch(
            str(source[i]),
            ts[i] / 1e6,
            entity[i:j].tolist(),
            metric[i:j].tolist(),
            value[i:j].tolist(),
        )  # fmt: skip
        for i, j in zip(starts.tolist(), ends.tolist())
    ]


def _copy_samples(con: Any, store: Any, run_id: str, plan_table: str) -> int:
    bounds = con.execute(
        f"SELECT epoch_us(min(ts)), epoch_us(max(ts)), count(*) FROM samples s "
        f"JOIN {plan_table} p ON s.run_id = p.run_id AND s.source = p.source "
        "AND s.entity = p.entity"
    ).fetchone()
    if bounds is None or not bounds[2]:
        return 0
    lo, hi, rows = int(bounds[0]), int(bounds[1]), int(bounds[2])
    step = max(1, int((hi - lo + 1) * min(1.0, CHUNK_ROWS / rows)) + 1)
    written = 0
    for start in range(lo, hi + 1, step):
        cols = con.execute(
            f"SELECT s.ts, s.source, p.new_entity AS entity, s.metric, s.value FROM samples s "
            f"JOIN {plan_table} p ON s.run_id = p.run_id AND s.source = p.source "
            "AND s.entity = p.entity WHERE s.ts >= make_timestamp(?) AND s.ts < make_timestamp(?) "
            "ORDER BY s.ts, s.source",
            [start, start + step],
        ).fetchnumpy()
        batches = tick_batches(cols)
        if batches:
            written += store.write_ticks([(run_id, batches)])
    return written


def _write_job(con: Any, store: Any, job: Job, out: Path) -> dict[str, Any]:
    from agent.analysis.engine import analyze_run
    from agent.analysis.finding import store_findings

    run_id = merged_run_id(job) if job.merged else job.members[0].run_id
    info = _merged_info(job, run_id, out) if job.merged else _copied_info(job.members[0], out)
    plan = entity_plan(con, job) if job.merged else None
    ids = [m.run_id for m in job.members]
    if plan is None:
        rows = con.execute(
            "SELECT DISTINCT run_id, source, entity FROM samples WHERE run_id = ? UNION "
            "SELECT run_id, source, entity FROM entities WHERE run_id = ?",
            [run_id, run_id],
        ).fetchall()
        plan = [(r, s, e, e, {}) for r, s, e in rows]
    merge_plan = {  # noqa: F841 - scanned by DuckDB
        "run_id": np.array([p[0] for p in plan], dtype=object),
        "source": np.array([p[1] for p in plan], dtype=object),
        "entity": np.array([p[2] for p in plan], dtype=object),
        "new_entity": np.array([p[3] for p in plan], dtype=object),
    }
    con.execute("CREATE OR REPLACE TEMP TABLE aw_merge_plan AS SELECT * FROM merge_plan")
    store.write_run(info)
    samples = _copy_samples(con, store, run_id, "aw_merge_plan")
    extra = {(p[0], p[1], p[2]): p[4] for p in plan}
    batches = []
    for src_run, source, entity, new, first_seen, attrs in con.execute(
        "SELECT e.run_id, e.source, e.entity, p.new_entity, epoch_us(e.first_seen), e.attrs "
        "FROM entities e JOIN aw_merge_plan p ON e.run_id = p.run_id AND e.source = p.source "
        "AND e.entity = p.entity"
    ).fetchall():
        merged_attrs = {**json_object(attrs), **extra.get((src_run, source, entity), {})}
        batches.append(Batch(source, first_seen / 1e6, [], [], [], (), {new: merged_attrs}))
    if batches:
        store.write_ticks([(run_id, batches)])
    rename = {(p[0], p[2]): p[3] for p in plan}
    marks = ", ".join("?" for _ in ids)
    events = [
        Event(ts / 1e6, kind, rename.get((src, entity), entity), json_object(detail))
        for src, ts, kind, entity, detail in con.execute(
            f"SELECT run_id, epoch_us(ts), kind, entity, detail FROM events "
            f"WHERE run_id IN ({marks}) ORDER BY ts",
            ids,
        ).fetchall()
    ]
    if job.merged:
        sources = [
            {"run_id": m.run_id, "db": m.run.get("db_path"), "node": m.node,
             "rank": m.ident.get("rank")}
            for m in job.members
        ]  # fmt: skip
        events.append(Event(info.started, "merged", "job", {"job": job.key, "from": sources}))
    if events:
        store.write_events(run_id, events)
    tracking = tracking_batch(con, job, info.started) if job.merged else None
    if tracking is not None:
        store.write_ticks([(run_id, [tracking])])
    if job.merged:
        findings = analyze_run(store.con, run_id)
    else:
        findings, live = stored_findings(LocalReadConnection(con), run_id)
        store_findings(store.con, run_id, findings, live=live)
    return {
        "run_id": run_id,
        "name": info.name,
        "merged": job.merged,
        "job": job.key,
        "from": ids,
        "nodes": sorted({m.node for m in job.members}),
        "samples": samples,
        "findings": len(findings),
        "entities": len({p[3] for p in plan}),
        "ranks": [m.ident.get("rank") for m in job.members],
    }


def tracking_batch(con: Any, job: Job, started: float) -> Batch | None:
    """The members' training-client rows (metrics per rank; config and tags, each key from the
    lowest rank that set it) as one batch of tracking records, or None if there are none."""
    from agent.tracking.tables import (
        METRICS_RECORD,
        SETTINGS_RECORD,
        metric_columns,
        setting_columns,
    )

    def has(view: str) -> bool:
        return bool(
            con.execute(
                "SELECT count(*) FROM duckdb_views() WHERE view_name = ? AND NOT internal", [view]
            ).fetchone()[0]
        )

    ids = [m.run_id for m in job.members]  # lowest rank first
    marks = ", ".join("?" for _ in ids)
    records: dict[str, dict[str, np.ndarray]] = {}
    if has("train_metrics"):
        rows = con.execute(
            f"SELECT epoch_us(ts) / 1e6, rank, step, name, value FROM train_metrics "
            f"WHERE run_id IN ({marks}) ORDER BY ts",
            ids,
        ).fetchall()
        if rows:
            records[METRICS_RECORD] = metric_columns(rows)
    settings: list[tuple[Any, ...]] = []
    for view, kind in (("run_config", "config"), ("run_tags", "tag")):
        if not has(view):
            continue
        chosen: dict[str, Any] = {}
        for member in job.members:
            for key, value in con.execute(
                f"SELECT key, CAST(value AS VARCHAR) FROM {view} WHERE run_id = ?",
                [member.run_id],
            ).fetchall():
                chosen.setdefault(key, value)
        settings += [(started, kind, 0, k, v) for k, v in sorted(chosen.items())]
    if settings:
        records[SETTINGS_RECORD] = setting_columns(settings)
    if not records:
        return None
    return Batch("merge", started, [], [], [], records=records)


def _copied_info(member: Member, out: Path) -> RunInfo:
    from agent.reader import epoch_seconds
    from agent.runs import _run_info  # one mapping from a runs row to RunInfo

    r = member.run
    row = [
        r["run_id"], r["name"], r["pid"], r["cmdline"], r["cwd"], r["host"],
        (epoch_seconds(r["started"]) or 0.0) * 1e6, r["interval_s"], json.dumps(r["tags"]),
        json.dumps(r["env"]), r["mode"], r["simulated"], r["scenario"],
        None if r["ended"] is None else (epoch_seconds(r["ended"]) or 0.0) * 1e6,
        r["exit_code"], r.get("recorded_status") or r["status"],
    ]  # fmt: skip
    info = _run_info(row, str(out))
    if info.status == "running":  # no agent records it in the merged file
        info.status = "incomplete"
    return info


def merge_databases(inputs: Sequence[str], into: str | os.PathLike[str]) -> dict[str, Any]:
    """Merge the runs of ``inputs`` into ``into``; what was written, and one line per job."""
    from agent.experiments.multidb import attach_read_only, db_label, expand_db_specs, union_views
    from agent.store import Store

    paths = expand_db_specs(list(inputs))
    out = Path(into)
    targets = {os.path.realpath(p) for p in paths}
    if os.path.realpath(out) in targets:
        raise UsageError(f"--into {out} is one of the inputs; merge into a new file")
    con, attached = attach_read_only(paths)
    created = not out.exists()
    store = None
    try:
        union_views(con, attached)
        runs = list_runs(LocalReadConnection(con, tuple(attached)))
        if not runs:
            raise UsageError(f"no runs in {db_label(attached)}")
        store = Store(out)
        have = {r[0] for r in store.con.execute("SELECT run_id FROM runs").fetchall()}
        written, lines = [], []
        for job in group_jobs(runs):
            run_id = merged_run_id(job) if job.merged else job.members[0].run_id
            if run_id in have:
                lines.append(f"skipped {run_id}: already in {out}")
                continue
            result = _write_job(con, store, job, out)
            written.append(result)
            if job.merged:
                lines.append(
                    f"merged {len(job.members)} runs of job {job.key} into {run_id} "
                    f"({len(result['nodes'])} node(s), {result['samples']} samples, "
                    f"{result['findings']} findings)"
                )
            else:
                lines.append(f"copied {run_id} as it is (it names no job with other runs)")
    except BaseException:
        if store is not None:
            store.close()
            store = None
        if created:  # leave nothing half-made behind
            for leftover in (out, out.with_name(out.name + ".wal")):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        raise
    finally:
        if store is not None:
            store.close()
        con.close()
    return {"runs": written, "lines": lines}
