"""The ``runs`` view: a run's latest row in ``run_log`` with its newest heartbeat.

Kept apart from :mod:`agent.store` (the schema and its migrations) so each stays readable.
"""

from __future__ import annotations

#: ``runs``: each run's latest row with its newest heartbeat (appended every few seconds; a
#: file written before Dec 2026 holds one updated row per run, read the same way).
RUNS_VIEW = """
CREATE OR REPLACE VIEW runs AS
    SELECT r.run_id, r.name, r.mode, r.pid, r.cmdline, r.cwd, r.host, r.started, r.ended,
           r.exit_code, r.status, r.interval_s, r.tags, r.env, r.simulated, r.scenario,
           h.last_sample, r.agent_host, r.agent_pid, h.heartbeat, r.lost_ticks
    FROM run_log r LEFT JOIN (
        SELECT run_id, max(last_sample) AS last_sample, max(heartbeat) AS heartbeat
        FROM run_heartbeat GROUP BY run_id) h ON h.run_id = r.run_id
    QUALIFY row_number() OVER (PARTITION BY r.run_id ORDER BY r.logged DESC) = 1;
"""

_V1_RUNS_VIEW = """
CREATE OR REPLACE VIEW runs AS
    SELECT * EXCLUDE (logged) FROM run_log QUALIFY row_number() OVER (
        PARTITION BY run_id ORDER BY logged DESC) = 1;
"""

#: Columns the ``runs`` view gained in schema 2 (absent when reading a version-1 file).
RUNS_V2_COLUMNS = ("last_sample", "agent_host", "agent_pid", "heartbeat", "lost_ticks")
