"""A small training job with a multiprocessing data loader, to watch with accelwatch.

    accelwatch run -- python examples/train.py --steps 30 --workers 2

Workers produce batches (CPU work + a little file I/O) into a bounded queue; the main
process "trains" a linear model on them with NumPy and logs one line per few steps. With the
``accelwatch`` client importable, each step is marked (``accelwatch.step()``) and its loss
logged (``accelwatch.log``): under ``accelwatch run`` they land in the run; without it, or with
no agent watching, the calls cost nothing.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import tempfile
import time

import numpy as np

try:  # the example also runs where accelwatch is not installed
    import accelwatch
except ImportError:  # pragma: no cover - depends on the environment
    accelwatch = None


def loader_worker(
    worker_id: int,
    batches: mp.Queue,
    stop: mp.Event,
    batch_size: int,
    features: int,
    load_delay: float,
) -> None:
    """Make batches until told to stop: synthesise, 'augment', touch a shard file."""
    rng = np.random.default_rng(worker_id)
    shard = os.path.join(tempfile.gettempdir(), f"accelwatch-example-shard-{os.getpid()}.bin")
    try:
        while not stop.is_set():
            x = rng.standard_normal((batch_size, features)).astype(np.float32)
            x = np.tanh(x @ rng.standard_normal((features, features)).astype(np.float32))
            with open(shard, "wb") as fh:
                fh.write(x.tobytes())
            y = x.sum(axis=1, keepdims=True)
            if load_delay:
                time.sleep(load_delay)
            while not stop.is_set():
                try:
                    batches.put((x, y), timeout=0.2)
                    break
                except queue.Full:
                    continue
    finally:
        if os.path.exists(shard):
            os.unlink(shard)


def train(
    steps: int,
    workers: int,
    batch_size: int,
    features: int,
    load_delay: float,
    duration: float | None = None,
) -> float:
    ctx = mp.get_context("spawn")
    batches: mp.Queue = ctx.Queue(maxsize=2 * workers)
    stop = ctx.Event()
    procs = [
        ctx.Process(
            target=loader_worker,
            args=(i, batches, stop, batch_size, features, load_delay),
            name=f"loader-{i}",
            daemon=True,
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    if accelwatch is not None:
        accelwatch.config(
            {"workers": workers, "batch_size": batch_size, "features": features, "lr": 0.01}
        )
    w = np.zeros((features, 1), dtype=np.float32)
    loss = float("nan")
    deadline = time.monotonic() + duration if duration else None
    try:
        for step in range(1, steps + 1):
            if deadline is not None and time.monotonic() >= deadline:
                print(f"stopping after {duration:g} s at step {step - 1}", flush=True)
                break
            x, y = batches.get(timeout=60)
            for _ in range(4):  # a few "kernels" per step
                pred = x @ w
                grad = x.T @ (pred - y) / len(x)
                w -= 0.01 * grad
            loss = float(np.mean((x @ w - y) ** 2))
            if accelwatch is not None:
                accelwatch.log(step=step, loss=loss)
                accelwatch.step()
            if step % 10 == 0 or step == steps:
                print(f"step {step}/{steps} loss {loss:.4f}", flush=True)
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds even if steps remain",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument(
        "--load-delay",
        type=float,
        default=0.05,
        help="seconds each worker sleeps per batch (simulated I/O latency)",
    )
    args = parser.parse_args()
    train(args.steps, args.workers, args.batch_size, args.features, args.load_delay, args.duration)


if __name__ == "__main__":
    main()
