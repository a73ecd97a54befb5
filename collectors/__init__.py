"""Collectors: one module per source, all behind :class:`agent.source.Collector`."""
