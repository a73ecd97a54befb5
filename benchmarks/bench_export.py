"""What exporting costs the whole agent: export on vs off, and OTLP to an endpoint that is down.

Three headless agents record the same scenario (8 simulated H100s, ``healthy``) and the same
real 32-process tree at 1 Hz, at once; each is measured whole over the same windows (the
process's CPU-time clock in ns, all threads; RSS), by default in the steady state
(``benchmarks._span``: after the live analysis' window has filled, over one whole full-pass
period):

* off: ``accelwatch attach ROOT --headless --simulate healthy``: no exporter;
* on: the same with ``--otlp 127.0.0.1:P`` (gRPC to a receiver in this process that accepts
  every export) and ``--prometheus 127.0.0.1:Q`` (scraped by this process every 15 s);
* down: the same with ``--otlp 127.0.0.1:C``, a closed port.

OTLP exports every ``--window`` seconds (``OTEL_METRIC_EXPORT_INTERVAL``; the SDK default is
60 s, the steady-state window: each window holds one export). Targets (issue 14): each
exporting agent costs <= +10% of the non-exporting agent's CPU (the whole agent's sampling,
storing and analysis) over the whole span; memory is bounded: from the first window to the last
of the span, an exporting agent's RSS grows <= 5 MB more than the non-exporting one's (the
agent's own growth is printed beside it). Exits 1 on a MISS.

    python benchmarks/bench_export.py [--rounds 11] [--window 60] [--warmup 630] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    Report,
    Side,
    agent_argv,
    fail,
    interleaved,
    process_tree,
    spread,
)
from benchmarks._span import (  # noqa: E402
    add_span_args,
    apply_span,
    burst_row,
    cpu_row,
    judge_extra,
    judge_resolution,
    note_span,
    report_sides,
)

TARGET_CPU = 0.10
TARGET_GROWTH_MB = 5.0
SCRAPE_EVERY_S = 15.0
#: What the receiver and the scraper saw: proof that "on" really exported.
RECEIVED = {"exports": 0, "scrapes": 0}
SERVICES = (
    "opentelemetry.proto.collector.metrics.v1.MetricsService",
    "opentelemetry.proto.collector.logs.v1.LogsService",
)


@contextlib.contextmanager
def otlp_receiver() -> Iterator[int]:
    """A gRPC server that answers every OTLP export with an empty (successful) response."""
    from concurrent import futures

    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))

    def export(request: bytes, context: object) -> bytes:
        RECEIVED["exports"] += 1
        return b""

    handler = grpc.unary_unary_rpc_method_handler(export)
    for service in SERVICES:
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"Export": handler}),)
        )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0)


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_every(url: str, period: float, stop: threading.Event) -> None:
    """A Prometheus server's scrapes, from this process."""
    while not stop.wait(period):
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=5).read()
            RECEIVED["scrapes"] += 1


def sides(root: int, tmp: Path, up: int, scrape: int, down: int, window: float) -> list[Side]:
    def agent(name: str, *extra: str) -> list[str]:
        return agent_argv(
            "attach", str(root), "--headless", "--simulate", "healthy",
            "--db", str(tmp / f"{name}.duckdb"), *extra,
        )  # fmt: skip

    env = {"OTEL_METRIC_EXPORT_INTERVAL": str(int(window * 1000))}
    return [
        Side("off", agent("off"), "the whole headless agent process (all threads), no exporter"),
        Side(
            "on",
            agent("on", "--otlp", f"127.0.0.1:{up}", "--prometheus", f"127.0.0.1:{scrape}"),
            f"the same + OTLP gRPC to a live receiver every {window:g} s + Prometheus endpoint "
            f"scraped every {SCRAPE_EVERY_S:g} s",
            env=env,
        ),
        Side(
            "down",
            agent("down", "--otlp", f"127.0.0.1:{down}"),
            f"the same + OTLP gRPC to a closed port every {window:g} s",
            env=env,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The memory target is growth over the windows: --quick's 20 s warm-up is still after the
    # agents released their start-up pages (agent/app/resident.py, 15 s after start).
    add_span_args(parser)
    args = parser.parse_args(argv)
    span = apply_span(args)
    stop = threading.Event()
    try:
        with tempfile.TemporaryDirectory() as name, process_tree(32) as root, otlp_receiver() as up:
            scrape, down = free_port(), free_port()
            all_sides = sides(root, Path(name), up, scrape, down, args.window)
            url = f"http://127.0.0.1:{scrape}/metrics"
            threading.Thread(
                target=scrape_every, args=(url, SCRAPE_EVERY_S, stop), daemon=True
            ).start()
            got = interleaved(all_sides, rounds=args.rounds, window=args.window, warmup=args.warmup)
    except Exception as exc:  # one line and exit 1, never a traceback mid-table
        return fail(exc)
    finally:
        stop.set()
    report = Report(
        f"export: 8 simulated H100s, 32-process tree, 1 Hz, {args.rounds} windows of "
        f"{args.window:g} s, every side in each"
    )
    note_span(report, span)
    report_sides(report, all_sides, got)
    off = got["off"]
    for m in got.values():
        cpu_row(report, m)
    burst_row(report, off)
    judge_resolution(report, got)
    for name in ("on", "down"):
        m = got[name]
        judge_extra(
            report, f"{name}: extra CPU / the agent's CPU without export", m, off, TARGET_CPU
        )
        rss = [s.rss_mb for s in m.slots]
        delta = [a.rss_mb - b.rss_mb for a, b in zip(m.slots, off.slots)]
        report.info(f"{name}: RSS - off RSS (MB)", spread(delta, "{:+.0f}"))
        report.info(f"{name}: RSS growth, first to last window (MB)", f"{rss[-1] - rss[0]:+.1f}")
        # The agent's own RSS grows over its first minutes (DuckDB, the live window) with or
        # without export: the exporter's growth is how much more this side grew than "off".
        own = delta[-1] - delta[0]
        report.target(
            f"{name}: its growth beyond off's, first to last window (MB)",
            f"{own:+.1f}",
            f"<= {TARGET_GROWTH_MB:g}",
            own <= TARGET_GROWTH_MB,
        )
    off_rss = [s.rss_mb for s in off.slots]
    report.info("off: RSS growth, first to last window (MB)", f"{off_rss[-1] - off_rss[0]:+.1f}")
    report.target(
        "on: OTLP exports received, Prometheus scrapes answered",
        f"{RECEIVED['exports']}, {RECEIVED['scrapes']}", "> 0, > 0",
        RECEIVED["exports"] > 0 and RECEIVED["scrapes"] > 0,
    )  # fmt: skip
    report.info("off RSS (MB)", spread([s.rss_mb for s in off.slots], "{:.0f}"))
    return report.print()


if __name__ == "__main__":
    sys.exit(main())
