"""Simulated TPU VM (libtpu metrics server + fake sysfs tree); see ``vm.py``. Thin on purpose:
the scenario loader imports ``scenario.py`` without loading gRPC."""
