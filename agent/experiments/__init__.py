"""Runs as experiments: run statistics, compare, export, merge, and reading several databases
as one (``--db 'nodes/*.duckdb'``). Everything here reads through :mod:`agent.runs`."""
