"""Storage source: the filesystems the job uses, read from ``<proc_root>`` and ``<sys_root>``.

``source.py`` declares it (metrics in :mod:`agent.catalog.storage`); ``mounts.py`` finds the
job's mounts, ``nfs.py`` / ``lustre.py`` / ``block.py`` parse and difference each type's
figures, ``collector.py`` ties them together each tick.
"""
