"""``accelwatch compare RUN_A RUN_B``: two runs side by side, and what changed in words.

A is the baseline, B the candidate; every change reads "from A to B". Numbers come from
:func:`agent.experiments.stats.run_stats` (one statement for both runs), findings from the
report's own lookup (stored post-run findings, else an in-memory analysis of a finished run),
the configuration from the client's ``run_config`` table when the file has one, and the tags.

A difference is *called out* when it is large enough to matter (:data:`THRESHOLDS`): a rule
found in one run and not the other, step time or throughput by 3 % or more, accelerator
activity by 5 points, peak memory or energy per step by 10 % / 5 %, a final training metric by
1 %, and every configuration or tag that differs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from agent.errors import UsageError
from agent.model import RunInfo
from agent.runs import (
    DbSpec,
    ReadConnection,
    db_label,
    find_run,
    has_relation,
    last_sample_time,
)

#: What change is large enough to be called out.
THRESHOLDS: Mapping[str, float] = {
    "step_time": 0.03,  # relative
    "throughput": 0.03,
    "busy_points": 0.05,  # absolute share
    "memory": 0.10,
    "energy_per_step": 0.05,
    "metric": 0.01,
}
MINUS = "\u2212"


def compare_runs(db: ReadConnection, run_a: str, run_b: str, db_spec: DbSpec) -> dict[str, Any]:
    """Both runs' numbers, findings, configuration, and the differences that matter."""
    from agent.experiments.stats import run_stats

    label = db_label(db_spec)
    a, b = find_run(db, run_a, label), find_run(db, run_b, label)
    if a.run_id == b.run_id:
        raise UsageError(f"{run_a!r} and {run_b!r} are the same run ({a.run_id}); compare two")
    durations = {r.run_id: _duration(db, r) for r in (a, b)}
    numbers = run_stats(db, list(durations.items()), percentiles=True)
    sides = {}
    for key, info in (("a", a), ("b", b)):
        findings, found = _findings(db, info, label)
        sides[key] = {
            "run_id": info.run_id,
            "name": info.name,
            "status": info.status,
            "started": _utc(info.started),
            "duration_s": durations[info.run_id],
            "db_path": _db_of(db, info.run_id),
            **numbers.get(info.run_id, {}),
            "findings_from": found,
            "findings": findings,
            "config": _settings(db, info.run_id, "run_config"),
            "tags": {**_settings(db, info.run_id, "run_tags"), **info.tags},
            "metrics": _final_metrics(db, info.run_id),
        }
    differences = differences_between(sides["a"], sides["b"])
    return {
        "a": sides["a"],
        "b": sides["b"],
        "differences": differences,
        "summary": "; ".join(d["text"] for d in differences) or "no difference that matters",
    }


def _utc(epoch_s: float) -> Any:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch_s, timezone.utc)


def _duration(db: ReadConnection, info: RunInfo) -> float | None:
    end = info.ended if info.ended is not None else last_sample_time(db, info.run_id)
    return None if end is None else max(0.0, end - info.started)


def _db_of(db: ReadConnection, run_id: str) -> str | None:
    paths = getattr(db, "paths", ())
    if len(paths) > 1:
        row = db.execute("SELECT db_path FROM runs WHERE run_id = ?", [run_id]).fetchone()
        return None if row is None else row[0]
    return paths[0] if paths else None


def _findings(db: ReadConnection, info: RunInfo, label: str) -> tuple[list[dict[str, Any]], str]:
    """One entry per rule (its worst finding, and on how many entities), as the report finds
    them (stored post-run findings, else analysed now in memory)."""
    from agent.analysis.finding import sort_findings
    from agent.report import build_report

    report = build_report(db, info.run_id, label)
    by_rule: dict[str, dict[str, Any]] = {}
    for f in sort_findings(report.findings):
        if f.rule in by_rule:
            by_rule[f.rule]["entities"].append(f.entity)
            continue
        by_rule[f.rule] = {
            "rule": f.rule,
            "severity": f.severity,
            "entities": [f.entity],
            "summary": f.summary,
            "lost_s": f.lost_s,
        }
    return list(by_rule.values()), report.findings_from


def _settings(db: ReadConnection, run_id: str, view: str) -> dict[str, Any]:
    """The run's ``run_config`` or ``run_tags`` (the training client's), {} for older files."""
    if not has_relation(db, view):
        return {}
    out: dict[str, Any] = {}
    for key, raw in db.execute(
        f"SELECT key, CAST(value AS VARCHAR) FROM {view} WHERE run_id = ? ORDER BY key", [run_id]
    ).fetchall():
        try:
            out[str(key)] = json.loads(raw) if raw is not None else None
        except ValueError:
            out[str(key)] = raw
    return out


def _final_metrics(db: ReadConnection, run_id: str) -> dict[str, float]:
    """Each logged training metric's last value (latest step, then time), if logged at all."""
    if not has_relation(db, "train_metrics"):
        return {}
    rows = db.execute(
        "SELECT name, arg_max(value, (coalesce(step, -1), ts)) FROM train_metrics "
        "WHERE run_id = ? AND value IS NOT NULL GROUP BY name ORDER BY name",
        [run_id],
    ).fetchall()
    return {str(n): float(v) for n, v in rows if v is not None and math.isfinite(v)}


# -- the differences that matter ------------------------------------------------------------


def number(value: Any) -> str:
    """A value as people write it: ``1e-3``, ``3e-4``, ``0.25``, ``128``, ``adam``."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e6):
            mantissa, exponent = f"{value:.3e}".split("e")
            mantissa = mantissa.rstrip("0").rstrip(".")
            return f"{mantissa}e{int(exponent)}"
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def signed_pct(change: float) -> str:
    return f"{change * 100:+.0f}%".replace("-", MINUS)


def _rel(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a == 0:
        return None
    return (b - a) / abs(a)


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f} GiB"


def differences_between(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What changed from A to B that matters, worded, most telling first."""
    out: list[dict[str, Any]] = []

    def add(kind: str, text: str, **detail: Any) -> None:
        out.append({"kind": kind, "text": text, **detail})

    rules_a = {f["rule"]: f for f in a.get("findings", [])}
    rules_b = {f["rule"]: f for f in b.get("findings", [])}
    for rule in rules_a.keys() - rules_b.keys():
        add("finding", f"{rule} finding gone", rule=rule, present_in="a")
    for rule in rules_b.keys() - rules_a.keys():
        add("finding", f"new {rule} finding", rule=rule, present_in="b")
    out.sort(key=lambda d: (d["present_in"], d["rule"]))

    step = _rel(a.get("step_time_mean_s"), b.get("step_time_mean_s"))
    if step is not None and abs(step) >= THRESHOLDS["step_time"]:
        add("step_time", f"step time {signed_pct(step)}", change=step)
    tput = _rel(a.get("throughput_steps_s"), b.get("throughput_steps_s"))
    if tput is not None and abs(tput) >= THRESHOLDS["throughput"] and step is None:
        add("throughput", f"throughput {signed_pct(tput)}", change=tput)
    tail = _rel(a.get("step_time_s_p99"), b.get("step_time_s_p99"))
    if tail is not None and step is not None and abs(tail - step) >= 0.10:
        add("step_time_p99", f"p99 step time {signed_pct(tail)}", change=tail)
    busy_a, busy_b = a.get("accel_busy_mean"), b.get("accel_busy_mean")
    if (
        busy_a is not None
        and busy_b is not None
        and abs(busy_b - busy_a) >= THRESHOLDS["busy_points"]
    ):
        add(
            "accel_busy",
            f"accelerator activity {busy_a * 100:.0f}% \u2192 {busy_b * 100:.0f}%",
            change=busy_b - busy_a,
        )
    mem = _rel(a.get("memory_peak_bytes"), b.get("memory_peak_bytes"))
    if mem is not None and abs(mem) >= THRESHOLDS["memory"]:
        add(
            "memory",
            f"peak accelerator memory {signed_pct(mem)} ({_gib(a['memory_peak_bytes'])} \u2192 "
            f"{_gib(b['memory_peak_bytes'])})",
            change=mem,
        )
    energy = _rel(a.get("energy_per_step_j"), b.get("energy_per_step_j"))
    if energy is not None and abs(energy) >= THRESHOLDS["energy_per_step"]:
        add("energy_per_step", f"energy per step {signed_pct(energy)}", change=energy)
    metrics_a, metrics_b = a.get("metrics") or {}, b.get("metrics") or {}
    for name in sorted(metrics_a.keys() & metrics_b.keys()):
        change = _rel(metrics_a[name], metrics_b[name])
        if change is not None and abs(change) >= THRESHOLDS["metric"]:
            add(
                "metric",
                f"final {name} {number(metrics_a[name])} \u2192 {number(metrics_b[name])}",
                name=name,
                change=change,
            )
    for kind, left, right in (
        ("config", a.get("config") or {}, b.get("config") or {}),
        ("tag", a.get("tags") or {}, b.get("tags") or {}),
    ):
        prefix = "tag " if kind == "tag" else ""
        for key in sorted(left.keys() | right.keys()):
            if key in left and key in right:
                if left[key] != right[key]:
                    add(kind, f"{prefix}{key} {number(left[key])} \u2192 {number(right[key])}",
                        key=key, a=left[key], b=right[key])  # fmt: skip
            elif key in left:
                add(kind, f"{prefix}{key} {number(left[key])} unset", key=key, a=left[key], b=None)
            else:
                add(kind, f"{prefix}{key} set to {number(right[key])}", key=key, a=None,
                    b=right[key])  # fmt: skip
    return out


# -- text ------------------------------------------------------------------------------------


def energy_text(joules: float | None) -> str:
    """Joules as a person reads them: ``18 kJ``, ``3.2 kWh``."""
    if joules is None:
        return "-"
    for scale, unit in ((3.6e6, "kWh"), (1e6, "MJ"), (1e3, "kJ")):
        if joules >= scale:
            return f"{joules / scale:.3g} {unit}"
    return f"{joules:.3g} J"


ROWS = (
    ("duration", "duration_s", "dur"),
    ("steps", "steps", "int"),
    ("step time mean", "step_time_mean_s", "s"),
    ("step time p50", "step_time_s_p50", "s"),
    ("step time p90", "step_time_s_p90", "s"),
    ("step time p99", "step_time_s_p99", "s"),
    ("throughput", "throughput_steps_s", "rate"),
    ("throughput p50", "throughput_steps_s_p50", "rate"),
    ("throughput p90", "throughput_steps_s_p90", "rate"),
    ("throughput p99", "throughput_steps_s_p99", "rate"),
    ("accelerators", "accelerators", "int"),
    ("accel activity mean", "accel_busy_mean", "pct"),
    ("accel activity p50", "accel_busy_p50", "pct"),
    ("accel activity p90", "accel_busy_p90", "pct"),
    ("memory peak", "memory_peak_bytes", "bytes"),
    ("memory mean", "memory_mean_bytes", "bytes"),
    ("energy", "energy_j", "j"),
    ("energy per step", "energy_per_step_j", "j"),
)


def _fmt(value: Any, kind: str) -> str:
    from agent.analysis.rules.common import duration

    if value is None:
        return "-"
    if kind == "dur":
        return duration(value)
    if kind == "int":
        return str(int(value))
    if kind == "j":
        return energy_text(value)
    if kind == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.3g} s"
    if kind == "rate":
        return f"{value:.3g}/s"
    if kind == "pct":
        return f"{value * 100:.0f}%"
    if kind == "bytes":
        return _gib(value)
    return number(value)


def _change(a: Any, b: Any, kind: str) -> str:
    if kind == "pct" and a is not None and b is not None:
        points = (b - a) * 100
        return f"{points:+.0f} pt".replace("-", MINUS) if round(points) else ""
    change = _rel(a, b) if kind not in ("int", "dur") or a else None
    return signed_pct(change) if change is not None and round(change * 100) else ""


def render_comparison(c: Mapping[str, Any]) -> str:
    a, b = c["a"], c["b"]
    head_a, head_b = f"A {a['name']}", f"B {b['name']}"
    lines = [
        f"accelwatch compare: {a['name']} ({a['run_id']}) \u2192 {b['name']} ({b['run_id']})",
        "",
        f"  what changed: {c['summary']}",
        "",
        f"  {'':22} {head_a[:22]:>22} {head_b[:22]:>22}  change",
    ]
    for title, key, kind in ROWS:
        va, vb = a.get(key), b.get(key)
        if va is None and vb is None:
            continue
        lines.append(
            f"  {title:22} {_fmt(va, kind):>22} {_fmt(vb, kind):>22}  {_change(va, vb, kind)}".rstrip()
        )
    rules = sorted({f["rule"] for f in a["findings"]} | {f["rule"] for f in b["findings"]})
    lines += ["", f"Findings ({len(rules)})"]
    fa = {f["rule"]: f for f in a["findings"]}
    fb = {f["rule"]: f for f in b["findings"]}
    for rule in rules:
        state = (
            "in both" if rule in fa and rule in fb else "gone in B" if rule in fa else "new in B"
        )
        cells = [_finding_cell(fa.get(rule)), _finding_cell(fb.get(rule))]
        lines.append(f"  {rule:22} {cells[0]:>22} {cells[1]:>22}  {state}")
    if not rules:
        lines.append("  none in either run")
    for title, key in (("Configuration", "config"), ("Tags", "tags"), ("Final metrics", "metrics")):
        left, right = a.get(key) or {}, b.get(key) or {}
        if not left and not right:
            continue
        lines += ["", title]
        for k in sorted(left.keys() | right.keys()):
            va = number(left[k]) if k in left else "-"
            vb = number(right[k]) if k in right else "-"
            mark = "" if left.get(k) == right.get(k) and k in left and k in right else "  differs"
            lines.append(f"  {k[:22]:22} {va[:22]:>22} {vb[:22]:>22}{mark}")
    return "\n".join(lines) + "\n"


def _finding_cell(f: Mapping[str, Any] | None) -> str:
    if f is None:
        return "-"
    n = len(f["entities"])
    return f"{f['severity']} on {f['entities'][0] if n == 1 else f'{n} entities'}"


__all__ = ["THRESHOLDS", "compare_runs", "differences_between", "render_comparison"]
