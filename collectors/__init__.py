"""Collectors: one module per source, all behind :class:`collectors.base.Collector`."""
