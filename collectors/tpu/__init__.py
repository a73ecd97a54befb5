"""TPU source: chips from sysfs, ownership from the job's fds, metrics from libtpu's runtime."""
