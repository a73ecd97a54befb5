"""The Prometheus endpoint's thread sleeps between scrapes (the library's default woke it
twice a second) and still closes at once."""

from __future__ import annotations

import socket
import time
import urllib.request

from exporters import prometheus
from exporters.prometheus import PrometheusEndpoint


class OneLine:
    def render(self, points) -> str:
        return "up 1\n"


def test_the_idle_prometheus_thread_wakes_rarely_and_close_returns_at_once():
    assert prometheus.POLL_INTERVAL_S >= 10
    endpoint = PrometheusEndpoint("127.0.0.1:0")
    health: dict = {}
    host, port = endpoint.serve(health, lambda snapshot: {}, lambda: None, OneLine())
    url = f"http://{host}:{port}/metrics"
    assert urllib.request.urlopen(url, timeout=5).read() == b"up 1\n"
    time.sleep(0.2)  # the thread is back in its (long) select
    started = time.monotonic()
    endpoint.close()
    assert time.monotonic() - started < 1.0
    assert health["prometheus.scrapes"] == 1  # the connection that woke it is no scrape
    with socket.socket() as s:
        assert s.connect_ex((host, port)) != 0  # nothing listens any more
