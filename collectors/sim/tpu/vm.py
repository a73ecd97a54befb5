"""Simulated TPU VM: a libtpu metrics server and a GCE metadata server on 127.0.0.1, and a fake
sysfs/dev/proc tree.

``install(scenario, owner_pids)`` is the TPU source's simulator: it writes the tree under a
private temporary directory, serves the scenario, and points the TPU collector at both through
its environment overrides; ``uninstall()`` undoes all three.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collectors.sim.tpu.metadata import SimulatedMetadataServer, node_attributes
from collectors.sim.tpu.scenario import TpuScenario
from collectors.sim.tpu.server import SimulatedTpuServer
from collectors.sim.tpu.tree import hold, write_tree


class SimulatedTpu:
    """A running simulated TPU VM: ``root`` (sys/, dev/, proc/) and ``server``."""

    def __init__(
        self,
        scenario: TpuScenario,
        *,
        root: str | Path | None = None,
        port: int = 0,
        owner_pids: Callable[[], list[int]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="accelwatch-tpu-"))
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.scenario = scenario
        self.files = write_tree(self.root, scenario.chip, scenario.chips)
        self._owner_pids = owner_pids
        self._held: set[int] = set()
        self._refreshed = 0.0
        self.refresh_owners()
        try:
            self.server = SimulatedTpuServer(scenario, port=port, clock=clock)
        except OSError:
            if self._own_root:
                shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.server.on_request = self.refresh_owners
        self._stop = threading.Event()
        if owner_pids is not None:  # the job starts after install: pick up its pids as they come
            threading.Thread(target=self._refresher, name="sim-tpu-owners", daemon=True).start()
        self._saved_env: dict[str, str | None] = {}
        #: The node's GCE metadata server, unless the scenario says the VM has none.
        self.metadata = self._start_metadata(scenario)
        self.metadata_url = self.metadata.url if self.metadata is not None else "off"

    def _start_metadata(self, scenario: TpuScenario) -> SimulatedMetadataServer | None:
        m = scenario.metadata
        if m.get("off"):
            return None
        attributes = node_attributes(
            scenario.chip.name,
            scenario.chips,
            accelerator_type=m.get("accelerator_type"),
            worker_number=m.get("worker_number", 0),
            workers=m.get("workers", 1),
            runtime_version=m.get("runtime_version"),
        )
        try:
            return SimulatedMetadataServer(
                attributes, delay_s=float(m.get("delay_s", 0.0)), absent=m.get("absent", ())
            )
        except OSError:
            self.server.stop()
            if self._own_root:
                shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def env(self) -> dict[str, str]:
        """The collector's overrides that point it at this simulation."""
        return {
            "ACCELWATCH_TPU_SYS_ROOT": str(self.root / "sys"),
            "ACCELWATCH_TPU_DEV_ROOT": str(self.root / "dev"),
            "ACCELWATCH_TPU_PROC_ROOT": str(self.root / "proc"),
            "ACCELWATCH_TPU_RUNTIME": self.server.address,
            "ACCELWATCH_TPU_METADATA_URL": self.metadata_url,
        }

    def _refresher(self) -> None:
        while not self._stop.wait(0.25):
            self._refreshed = 0.0
            self.refresh_owners()

    def refresh_owners(self) -> None:
        """The owner pids hold every device file (the job opened the chips).

        Called on runtime requests too, at most once a second: the job starts after install.
        """
        now = time.monotonic()
        if self._owner_pids is None or (self._held and now - self._refreshed < 1.0):
            return
        self._refreshed = now
        for pid in self._owner_pids():
            if pid not in self._held:
                hold(self.root, pid, self.files)
                self._held.add(pid)

    def install(self) -> SimulatedTpu:
        for k, v in self.env.items():
            self._saved_env[k] = os.environ.get(k)
            os.environ[k] = v
        return self

    def uninstall(self) -> None:
        self._stop.set()
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env.clear()
        self.server.stop()
        if self.metadata is not None:
            self.metadata.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SimulatedTpu:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()


def install(
    scenario: Any, owner_pids: Callable[[], list[int]] | None = None
) -> SimulatedTpu | None:
    """The TPU source's simulator: None for a scenario without a ``[tpu]`` table."""
    tpu = getattr(scenario, "tpu", None)
    if tpu is None:
        return None
    return SimulatedTpu(tpu, owner_pids=owner_pids).install()
