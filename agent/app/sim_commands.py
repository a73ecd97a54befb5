"""``accelwatch sim serve``: a scenario's simulated devices, standalone, for other tools.

For a TPU scenario: the libtpu metrics server on 127.0.0.1:PORT and the fake sys/dev tree,
until SIGINT/SIGTERM or ``--duration``. GPUs are simulated inside the recording process (the
NVML library is replaced in-process), so a GPU-only scenario has nothing to serve.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from agent.errors import AccelwatchError, UsageError


def cmd_sim(args) -> int:
    from collectors.sim import ScenarioError, load_scenario

    if not 0 <= args.port < 65536:
        raise UsageError(f"--port {args.port}: not a TCP port")
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None
    if scenario.tpu is None:
        raise UsageError(
            f"scenario {scenario.name!r} has no standalone simulated devices "
            "(its GPUs are simulated inside `accelwatch run --simulate`)"
        )
    from collectors.sim.tpu.vm import SimulatedTpu

    root = Path(args.sys_root) if args.sys_root else None
    try:
        vm = SimulatedTpu(scenario.tpu, root=root, port=args.port)
    except OSError as exc:
        raise AccelwatchError(f"cannot serve on 127.0.0.1:{args.port}: {exc}") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        print(f"serving {scenario.name} ({scenario.tpu.describe()}) on {vm.server.address}")
        for key, value in vm.env.items():
            print(f"export {key}={value}")
        sys.stdout.flush()
        stop.wait(args.duration)
    finally:
        vm.uninstall()
    return 0
