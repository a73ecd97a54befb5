"""The training-side client: cheap calls that hand metrics to the agent watching this process.

Nothing here may slow or crash training. Calls append a tuple to a list and return; the list is
sent as one datagram when :data:`FLUSH_S` has passed since the last send (or it holds
:data:`MAX_BATCH` messages), on the non-blocking Unix datagram socket the agent named
(``ACCELWATCH_SOCKET``) or created for the job's root process (an attaching agent). A send
that fails (no agent yet, a dead agent, a full queue) keeps the datagram in a bounded queue and
retries with backoff; what overflows is dropped and counted, and the count travels in the next
datagram. With no agent every call returns after one clock read; the search for an agent
repeats at most every :data:`PROBE_S` seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any

from accelwatch import _wire
from accelwatch._socket import MAX_SENDS_PER_CALL, find_socket

#: Seconds between two datagrams while calls keep coming (the latency of live step times).
FLUSH_S = 0.05
#: Messages in one datagram at most: bounds the one call in MAX_BATCH that encodes and sends
#: (~20 µs; its p99.9 stays under 100 µs on a busy machine), and keeps datagrams small.
MAX_BATCH = 16
#: Seconds between two searches for an agent while none is found.
PROBE_S = 3.0
#: Bounds on what ``config``/``tag`` keep (they are re-sent to an agent that attaches later).
MAX_CONFIG_KEYS = 1024
MAX_TEXT = 1000
_DEPTH = 6

_time = time.time
_monotonic = time.monotonic


def _int_env(env: Mapping[str, str], *keys: str) -> int | None:
    for key in keys:
        value = env.get(key)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                continue
    return None


def _pieces(flat: dict[str, Any], budget: int = _wire.MAX_DATAGRAM // 4) -> list[dict[str, Any]]:
    """A large config in parts that each fit a datagram (sizes estimated from the text)."""
    parts: list[dict[str, Any]] = [{}]
    size = 0
    for key, value in flat.items():
        cost = len(key) + len(str(value)) + 8
        if size + cost > budget and parts[-1]:
            parts.append({})
            size = 0
        parts[-1][key] = value
        size += cost
    return parts


class Client:
    """One process's sender. Module functions of :mod:`accelwatch` are a default instance's."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ
        self._config: dict[str, Any] = {}
        self._tags: dict[str, str] = {}
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)
        atexit.register(self._at_exit)

    def _reset(self) -> None:
        self._sink: Any = None
        self._disabled = False
        self._next_probe = 0.0
        self._buf: list[Any] = []
        self._flush_at = 0.0
        self._n = 0
        self._last_step: float | None = None
        self._warned: set[str] = set()
        self._header: dict[str, Any] = {}
        self._retired: list[Any] = []
        self.internal_errors = 0

    def _after_fork(self) -> None:
        """A forked child (a loader worker) is not the rank's step clock; it starts afresh."""
        self._config = {}
        self._tags = {}
        self._reset()

    # -- finding the agent
    def _probe(self) -> bool:
        """Look for an agent (at most every PROBE_S seconds); True once there is a sink."""
        now = _monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + PROBE_S
        try:
            env = os.environ if self._environ is None else self._environ
            mode = env.get(_wire.ENV_MODE, "auto").strip().lower()
            if mode in ("disabled", "off", "0"):
                self._next_probe = float("inf")
                return False
            if mode == "offline":
                from accelwatch._offline import OfflineSink

                sink: Any = OfflineSink(env, flush=self.flush)
                self._next_probe = float("inf")
            else:
                sink = find_socket(env)
            if sink is None:
                return False
            self._header = {
                "v": _wire.VERSION,
                "pid": os.getpid(),
                "rank": _int_env(env, "RANK", "SLURM_PROCID"),
                "local_rank": _int_env(env, "LOCAL_RANK", "SLURM_LOCALID"),
                "world_size": _int_env(env, "WORLD_SIZE", "SLURM_NTASKS"),
            }
        except Exception as exc:  # never into training: say it once, stay quiet
            self.internal_errors += 1
            self._say_once("probe", f"cannot reach an agent ({type(exc).__name__}: {exc})")
            return False
        self._sink = sink
        t = _time()
        if self._config:  # said before this agent was there: it should still know
            self._buf.extend((_wire.CONFIG, t, part) for part in _pieces(dict(self._config)))
        if self._tags:
            self._buf.append((_wire.TAG, t, dict(self._tags)))
        return True

    # -- the API
    def log(self, step: int | None = None, **metrics: Any) -> None:
        """Record metrics (numbers) at ``step`` (default: the steps marked so far)."""
        if self._sink is None and (_monotonic() < self._next_probe or not self._probe()):
            return  # the unwatched path: one clock read, no method call
        try:
            t = _time()
            for value in metrics.values():
                if type(value) is not float:
                    metrics = self._numbers(metrics)
                    break
            if step is not None and type(step) is not int:
                step = self._step_number(step)
            self._buf.append((_wire.LOG, t, self._n if step is None else step, metrics))
            if t >= self._flush_at or len(self._buf) >= MAX_BATCH:
                self._flush(t)
        except Exception:
            self.internal_errors += 1

    def step(self) -> None:
        """Mark a step boundary: the time since the previous call is this rank's step time."""
        now = _monotonic()
        self._n += 1
        last, self._last_step = self._last_step, now
        if self._sink is None and (now < self._next_probe or not self._probe()):
            return
        try:
            t = _time()
            self._buf.append((_wire.STEP, t, self._n, None if last is None else now - last))
            if t >= self._flush_at or len(self._buf) >= MAX_BATCH:
                self._flush(t)
        except Exception:
            self.internal_errors += 1

    def config(self, values: Any = None, **more: Any) -> None:
        """Hyperparameters (a mapping, an argparse Namespace...); nested keys become ``a.b``."""
        try:
            flat: dict[str, Any] = {}
            if values is not None:
                if not isinstance(values, Mapping) and hasattr(values, "__dict__"):
                    values = vars(values)
                if not isinstance(values, Mapping):
                    self._say_once(
                        "config", f"config() takes a mapping, not {type(values).__name__}"
                    )
                    values = {}
                _flatten("", values, flat, 0)
            _flatten("", more, flat, 0)
            room = MAX_CONFIG_KEYS - len(self._config)
            fresh = [k for k in flat if k not in self._config]
            if len(fresh) > room:
                self._say_once(
                    "config.size", f"more than {MAX_CONFIG_KEYS} config keys; the rest are dropped"
                )
                for k in fresh[max(room, 0) :]:
                    del flat[k]
            live = self._sink is not None or self._probe()  # before: a new sink re-sends all
            self._config.update(flat)
            if live:
                for part in _pieces(flat):
                    self._emit((_wire.CONFIG, _time(), part))
        except Exception:
            self.internal_errors += 1

    def tag(self, **tags: Any) -> None:
        """Tags of the run (``tag(model="resnet", dataset="imagenet")``); values become text."""
        try:
            clean = {str(k)[:MAX_TEXT]: str(v)[:MAX_TEXT] for k, v in tags.items()}
            live = self._sink is not None or self._probe()
            if len(self._tags) + len(clean) <= MAX_CONFIG_KEYS:
                self._tags.update(clean)
            if live:
                self._emit((_wire.TAG, _time(), clean))
        except Exception:
            self.internal_errors += 1

    def finish(self) -> None:
        """Send what is buffered now, and tell the agent this process is done."""
        try:
            if self._sink is not None or self._probe():
                t = _time()
                self._buf.append((_wire.FINISH, t))
                self._flush(t, limit=None)
                closer = getattr(self._sink, "finish", None)
                if closer is not None:  # offline: the run ends; a later call starts another
                    closer()
                    self._sink = None
                    self._next_probe = 0.0
        except Exception:
            self.internal_errors += 1

    def flush(self) -> None:
        """Send what is buffered and queued now, all of it (also at interpreter exit)."""
        try:
            if self._sink is not None:
                self._flush(_time(), limit=None)
        except Exception:
            self.internal_errors += 1

    def _at_exit(self) -> None:
        self.flush()
        if self._sink is not None and hasattr(self._sink, "finish"):
            with contextlib.suppress(Exception):
                self._sink.finish()  # offline: the run ends with the interpreter

    def stats(self) -> dict[str, Any]:
        """What this process sent and lost: for tests, benchmarks and the curious."""
        sinks = [*self._retired, self._sink]
        errors: dict[str, int] = {}
        for s in sinks:
            for name, n in getattr(s, "errors", {}).items():
                errors[name] = errors.get(name, 0) + n
        return {
            "agent": getattr(self._sink, "path", None),
            "steps": self._n,
            "sent": sum(getattr(s, "sent", 0) for s in sinks),
            "dropped": sum(getattr(s, "dropped", 0) for s in sinks),
            "send_errors": errors,
            "buffered": len(self._buf),
            "internal_errors": self.internal_errors,
        }

    # -- internals
    def _emit(self, message: tuple[Any, ...]) -> None:
        self._buf.append(message)
        t = message[1]
        if t >= self._flush_at or len(self._buf) >= MAX_BATCH:
            self._flush(t)

    def _flush(self, t: float, limit: int | None = MAX_SENDS_PER_CALL) -> None:
        buf, self._buf = self._buf, []
        self._flush_at = t + FLUSH_S
        sink = self._sink
        if sink is None:
            return
        sink.send(self._header, buf, t, limit)
        if sink.given_up(t):
            sink.close()
            self._retired.append(sink)  # its counts stay in stats()
            self._sink = None
            self._next_probe = _monotonic() + PROBE_S

    def _numbers(self, metrics: dict[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, value in metrics.items():
            if type(value) is float:
                out[key] = value
                continue
            number = self._number(key, value)
            if number is not None:
                out[key] = number
        return out

    def _number(self, key: str, value: Any) -> float | None:
        if isinstance(value, (int, float)):  # bool, int, float and their subclasses
            return float(value)
        item = getattr(value, "item", None)
        if callable(item):
            try:
                got = item()
            except Exception:
                got = None
            if isinstance(got, (int, float)):
                self._warn(
                    key,
                    f"{key}: {type(value).__name__} converted to float with .item() "
                    "(log a float to avoid the conversion; on a GPU tensor it waits for "
                    "the device)",
                )
                return float(got)
        self._warn(key, f"{key}: cannot log a {type(value).__name__} (not a number); dropped")
        return None

    def _step_number(self, step: Any) -> int | None:
        try:
            return int(step)
        except Exception:
            self._warn("step", f"step={step!r} is not an integer; the current step is used")
            return None

    def _warn(self, key: str, text: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        # -W error must not turn our warning into the job's exception
        with contextlib.suppress(Exception):
            warnings.warn(f"accelwatch: {text} (said once per key)", RuntimeWarning, stacklevel=5)

    def _say_once(self, key: str, text: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        with contextlib.suppress(Exception):
            sys.stderr.write(f"accelwatch: {text}\n")


def _flatten(prefix: str, values: Mapping[Any, Any], out: dict[str, Any], depth: int) -> None:
    for key, value in values.items():
        name = f"{prefix}{key}"[:MAX_TEXT]
        if isinstance(value, Mapping) and depth < _DEPTH:
            _flatten(name + ".", value, out, depth + 1)
        else:
            out[name] = _plain(value, depth)


def _plain(value: Any, depth: int) -> Any:
    """A JSON value for a config entry: numbers, text, bools, lists; anything else as text."""
    if value is None or isinstance(value, (bool, int, float)):
        return value if type(value) in (bool, int, float) or value is None else _plain_number(value)
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if isinstance(value, (list, tuple)) and depth < _DEPTH:
        return [_plain(v, depth + 1) for v in value[:100]]
    item = getattr(value, "item", None)
    if callable(item):
        try:
            got = item()
            if isinstance(got, (bool, int, float, str)):
                return got
        except Exception:
            pass
    return str(value)[:MAX_TEXT]


def _plain_number(value: Any) -> Any:
    return (
        bool(value)
        if isinstance(value, bool)
        else (int(value) if isinstance(value, int) else float(value))
    )
