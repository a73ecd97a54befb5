"""Fabric source: InfiniBand / RoCE ports and network interfaces, read from ``<sys_root>``.

``source.py`` declares it (metrics in :mod:`agent.catalog.fabric`); ``parse.py`` holds the pure
parsers, ``ports.py`` / ``interfaces.py`` the readers, ``counters.py`` the wrap-aware counters.
"""
