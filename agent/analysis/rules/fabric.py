"""Fabric health and congestion: InfiniBand / RoCE ports, selected by metric role.

Both rules read the port metrics by role from the frame's per-bucket aggregate (``aw_agg``,
whose one scan of the samples carries them; the pivoted frames have no port columns): per
port and bucket the increase of each counter role and the extremes of each gauge role.

* ``fabric-health``: a port's error counters rise, it leaves ACTIVE/LinkUp after being up,
  or its rate falls below the highest it reached: a downtrained link. Only the port's own
  history counts (``port.rate.max``): a sibling port of its HCA may be cabled slower on
  purpose. A port already downtrained when first seen is not flagged: sysfs shows only the
  trained rate, no supported one, so nothing honest says it could run faster.
* ``fabric-congestion``: congestion notifications (CNP) or ECN marks arrive at a high rate
  while the port moves less than it did at its best.

Live, each rule's watch reads the same roles from the tick (:func:`role_values`, counters as
per-second rates): ``fabric-health`` runs once a port's errors rise or its rate is below its
maximum, and, timed by a watch of its own (kind ``down``), once a port is not up (one bucket
is its minimum duration, so it shows a bucket or two after the onset, and a port that goes
down after its finding was confirmed turns it critical as fast); ``fabric-congestion`` once a port receives the marks (its throughput against
its best over the window is the SQL's to judge).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from agent.analysis.engine import Context, Rule, weighted
from agent.analysis.finding import Finding
from agent.analysis.frame_sql import in_list
from agent.analysis.rules.common import by_entity, duration
from agent.analysis.rules.common import rate as rate_text
from agent.analysis.watch import Tick
from agent.catalog import CATALOG
from agent.snapshot import Snapshot

FABRIC_HEALTH = "fabric-health"
CONGESTION = "fabric-congestion"

#: Congestion signals per second on a port that count as congestion (CNP + ECN marks).
CONGESTION_PER_S = 100.0
#: Throughput below this share of the port's own best bucket counts as fallen.
THROUGHPUT_FALLEN = 0.7
#: A rate this far below the port's maximum is a downtrained link (not rounding).
DOWNTRAINED = 0.99

_COUNTER_ROLES = ("port.rx_bytes", "port.tx_bytes", "port.errors", "port.cnp", "port.ecn")
_GAUGE_ROLES = ("port.up", "port.rate", "port.rate.max")


def role_metrics(role: str) -> list[str]:
    return [m.name for m in CATALOG.by_role(role)]


#: Per set of roles: metric → (role, is a counter), and the sources the catalog declares
#: those metrics in (only their batches are read: a 1,000-process batch is not scanned).
_ROLE_PLANS: dict[tuple[str, ...], tuple[dict[str, tuple[str, bool]], frozenset[str]]] = {}
#: Per set of roles, the last tick's values (the watches of one tick share them).
_LAST_VALUES: dict[tuple[str, ...], tuple[Snapshot, dict[str, dict[str, list[float]]]]] = {}


def role_values(tick: Tick, roles: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """Per entity and role, the values of the role's metrics at this tick, counters as
    per-second rates since the previous tick (the SQL's increase per bucket, per second).

    A counter that appeared since the previous tick has no rate yet, but the SQL compares it
    with the entity's last bucket in the window, so its rate is ``inf`` here (a watch may say
    yes more often, never less); a counter that went backwards (a reset) counts 0, as there.
    """
    key = tuple(roles)
    snap = tick.snap
    last = _LAST_VALUES.get(key)
    if last is not None and last[0] is snap:
        return last[1]
    plan = _ROLE_PLANS.get(key)
    if plan is None:
        played = {m.name: (r, m.is_counter) for r in key for m in CATALOG.by_role(r)}
        plan = _ROLE_PLANS[key] = (played, frozenset(CATALOG[n].source for n in played))
    played, sources = plan
    out: dict[str, dict[str, list[float]]] = {}
    before, first = snap.previous, snap.previous_ts is None
    for b in snap.batches:
        if b.source not in sources:
            continue
        for e, m, v in zip(b.entities, b.metrics, b.values):
            found = played.get(m)
            if found is None:
                continue
            role, counter = found
            if counter:
                rate = snap.rate(e, m)
                v = rate if rate is not None else (math.inf if not first and (e, m) not in before
                                                   else 0.0)  # fmt: skip
            out.setdefault(e, {}).setdefault(role, []).append(v)
    _LAST_VALUES[key] = (snap, out)
    return out


def bucketed(ctx: Context, counter_roles: tuple[str, ...], gauge_roles: tuple[str, ...]) -> str:
    """SQL: ``entity, t`` and per role ``<role>_inc`` (counters, per bucket) or
    ``<role>_min`` / ``<role>_max`` (gauges), from the frame's per-bucket aggregate
    (``aw_agg``: the window's one scan of the samples carries these roles' metrics)."""
    w = ctx.info.window
    roles = {r: role_metrics(r) for r in (*counter_roles, *gauge_roles)}
    names = [n for ns in roles.values() for n in ns]
    cols = []
    for role in counter_roles:
        cols.append(
            f"sum(inc) FILTER (WHERE metric IN ({in_list(roles[role])})) AS {_alias(role)}_inc"
        )
    for role in gauge_roles:
        cols.append(
            f"min(mn) FILTER (WHERE metric IN ({in_list(roles[role])})) AS {_alias(role)}_min"
        )
        cols.append(
            f"max(mx) FILTER (WHERE metric IN ({in_list(roles[role])})) AS {_alias(role)}_max"
        )
    return f"""
        SELECT entity, k * {w.bucket_s} AS t, {", ".join(cols)}
        FROM (SELECT entity, metric, k, min AS mn, max AS mx,
                     greatest(max - lag(max) OVER (PARTITION BY entity, metric ORDER BY k), 0)
                         AS inc
              FROM aw_agg WHERE metric IN ({in_list(names)}))
        GROUP BY entity, k"""


def _alias(role: str) -> str:
    return role.replace(".", "_")


def _gbps(bytes_per_s: float | None) -> str:
    return "n/a" if bytes_per_s is None else f"{bytes_per_s * 8 / 1e9:.0f} Gb/s"


def detect_fabric_health(ctx: Context) -> list[Finding]:
    b = ctx.info.bucket_s
    sql = f"""
        WITH p AS ({bucketed(ctx, _COUNTER_ROLES, _GAUGE_ROLES)}),
        q AS (SELECT *, max(port_up_max) OVER (PARTITION BY entity ORDER BY t
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS was_up FROM p)
        SELECT entity, t, coalesce(port_errors_inc, 0) / {b} AS errors_per_s,
               port_rate_min AS rate, port_rate_max_max AS rate_max,
               CASE WHEN port_up_min < 1 THEN 1.0 ELSE 0.0 END AS down,
               coalesce(port_errors_inc, 0) > 0
               OR (port_up_min < 1 AND was_up >= 1)
               OR (port_rate_min < {DOWNTRAINED} * port_rate_max_max AND port_up_max >= 1)
               AS flag
        FROM q"""
    eps = ctx.episodes(sql, ["errors_per_s", "rate", "rate_max", "down"], min_duration_s=b)
    findings = []
    for port, p_eps in by_entity(eps).items():
        errors, rate, best, down = (weighted(p_eps, c) for c in ("errors_per_s", "rate",
                                                                  "rate_max", "down"))  # fmt: skip
        problems = []
        went_down = any(e.values.get("down") for e in p_eps)
        total = sum(e.duration_s for e in p_eps)
        # going down counts one in ``link_downed``: that alone is the down, not errors besides
        if errors and not (went_down and errors * total <= 1.0 + 1e-9):
            problems.append(f"{errors:.0f} errors/s" if errors >= 1 else f"{errors:.2g} errors/s")
        if rate is not None and best and rate < DOWNTRAINED * best:
            problems.append(f"running at {_gbps(rate)} of its {_gbps(best)} (downtrained)")
        if went_down:
            problems.append("left ACTIVE/LinkUp")
        name = port.removeprefix("ib:")
        findings.append(
            ctx.finding(
                FABRIC_HEALTH,
                "critical" if went_down else "warning",
                port,
                p_eps,
                f"Fabric port {name} is unhealthy: {', '.join(problems) or 'errors'} for "
                f"{duration(total)}.",
                f"Check the cable and switch port of {name} (ibstat, ibdiagnet, perfquery -x; "
                "mlxlink for the eye and BER); reseat or replace the cable, and drain the node "
                "from multi-node jobs until the link trains at full rate.",
                {
                    "metrics": [
                        *role_metrics("port.errors"),
                        *role_metrics("port.up"),
                        *role_metrics("port.rate"),
                        *role_metrics("port.rate.max"),
                    ],  # fmt: skip
                    "errors_per_s": errors,
                    "rate_bytes_per_s": rate,
                    "rate_max_bytes_per_s": best,
                    "went_down": went_down,
                    # its own watch times a port going down: a confirmed finding turns
                    # critical within the rule's latency, not at the next refresh
                    "kind": "down" if went_down else "degraded",
                    "down_share": down,
                    "threshold": {"errors_per_s_above": 0, "rate_below_max": DOWNTRAINED},
                },
            )
        )
    return findings


def detect_congestion(ctx: Context) -> list[Finding]:
    b = ctx.info.bucket_s
    sql = f"""
        WITH p AS ({bucketed(ctx, _COUNTER_ROLES, ())}),
        q AS (SELECT *, (coalesce(port_rx_bytes_inc, 0) + coalesce(port_tx_bytes_inc, 0)) / {b}
                        AS throughput,
                     (coalesce(port_cnp_inc, 0) + coalesce(port_ecn_inc, 0)) / {b} AS marks
              FROM p),
        r AS (SELECT *, quantile_cont(throughput, 0.9) OVER (PARTITION BY entity) AS best FROM q)
        SELECT entity, t, throughput, best, marks,
               coalesce(port_cnp_inc, 0) / {b} AS cnp, coalesce(port_ecn_inc, 0) / {b} AS ecn,
               marks >= {CONGESTION_PER_S} AND throughput < {THROUGHPUT_FALLEN} * best AS flag
        FROM r"""
    eps = ctx.episodes(sql, ["throughput", "best", "marks", "cnp", "ecn"])
    findings = []
    for port, p_eps in by_entity(eps).items():
        got, best, cnp, ecn = (weighted(p_eps, c) for c in ("throughput", "best", "cnp", "ecn"))
        total = sum(e.duration_s for e in p_eps)
        name = port.removeprefix("ib:")
        evidence: dict[str, Any] = {
            "metrics": [
                *role_metrics("port.cnp"),
                *role_metrics("port.ecn"),
                *role_metrics("port.rx_bytes"),
                *role_metrics("port.tx_bytes"),
            ],  # fmt: skip
            "throughput_bytes_per_s": got,
            "best_bytes_per_s": best,
            "cnp_per_s": cnp,
            "ecn_per_s": ecn,
            "threshold": {
                "marks_per_s_at_least": CONGESTION_PER_S,
                "throughput_below_best": THROUGHPUT_FALLEN,
            },  # fmt: skip
        }
        findings.append(
            ctx.finding(
                CONGESTION,
                "warning",
                port,
                p_eps,
                f"Fabric congestion on {name}: {cnp or 0:.0f} CNP/s (sent and handled) and "
                f"{ecn or 0:.0f} ECN marks/s "
                f"while it moved {rate_text(got)}, down from {rate_text(best)}, for "
                f"{duration(total)}.",
                "Congestion is in the network, not this node: check the switch buffers and PFC/"
                "ECN settings (DCQCN) with the network team, spread the job over less loaded "
                "leaves, or tune NCCL (NCCL_IB_QPS_PER_CONNECTION, NCCL_IB_TC) and the "
                "collective sizes.",
                evidence,
            )
        )
    return findings


_PORT_ROLES = (*_COUNTER_ROLES, *_GAUGE_ROLES)


def watch_fabric_health(tick: Tick) -> bool:
    """A port whose errors rise or that runs below its maximum rate (whether it was up before,
    and is up in the bucket, is the SQL's to judge). A port that is not up is
    :func:`watch_port_down`'s."""
    for roles in role_values(tick, _PORT_ROLES).values():
        if sum(roles.get("port.errors", ())) > 0:
            return True
        rate, best = roles.get("port.rate"), roles.get("port.rate.max")
        if rate and best and min(rate) < DOWNTRAINED * max(best):
            return True
    return False


def watch_port_down(tick: Tick) -> bool:
    """A port that is not up (ACTIVE and LinkUp): timed on its own, so a port that goes down
    after its errors were reported makes the rule run again at once."""
    return any(
        min(roles.get("port.up", (1.0,))) < 1 for roles in role_values(tick, _PORT_ROLES).values()
    )


def watch_congestion(tick: Tick) -> bool:
    """A port receiving congestion marks at the rule's rate (its throughput against its best
    over the window is the SQL's to judge)."""
    return any(
        sum(roles.get("port.cnp", ())) + sum(roles.get("port.ecn", ())) >= CONGESTION_PER_S
        for roles in role_values(tick, _PORT_ROLES).values()
    )


RULES = [
    Rule(
        FABRIC_HEALTH,
        "Fabric port health (errors, down, downtrained)",
        detect_fabric_health,
        min_duration_s=1.0,  # one bucket (``min_duration_s=b`` above) at 1 Hz
        watch=watch_fabric_health,
        kind_watches=(("down", watch_port_down),),
    ),
    Rule(
        CONGESTION,
        "Fabric congestion (CNP/ECN while throughput falls)",
        detect_congestion,
        watch=watch_congestion,
    ),
]
