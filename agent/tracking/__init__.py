"""Experiment tracking, agent side: what the job's own ``accelwatch`` client sends.

``receiver`` owns the private socket and its draining thread, ``aggregate`` turns datagrams
into per-rank step times, metric rows and config (bounded, drops counted), ``collector`` makes
that the collector of the ``steps`` source, and ``tables`` writes and reads the tracking tables
(``train_metrics``, ``run_config``, ``run_tags``). See docs/tracking.md.
"""
