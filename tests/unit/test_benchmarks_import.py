"""Every benchmark imports and parses ``--help``: a broken import or option shows up here, cheaply.

Speed itself is checked by the benchmarks, not by tests."""

from __future__ import annotations

import importlib

import pytest

BENCHMARKS = (
    "benchmarks.bench_analysis",
    "benchmarks.bench_client",
    "benchmarks.bench_export",
    "benchmarks.bench_live",
    "benchmarks.bench_nvml",
    "benchmarks.bench_recording",
    "benchmarks.bench_runs",
    "benchmarks.bench_tree",
    "benchmarks.bench_tui",
    "benchmarks._baselines",
)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_imports_and_help_parses(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(name)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("name", BENCHMARKS[:-1])
def test_benchmark_documents_its_sides_and_targets(name: str) -> None:
    doc = importlib.import_module(name).__doc__ or ""
    assert "Exits 1 on a MISS" in doc


def test_bench_recording_refuses_an_unknown_part() -> None:
    from benchmarks import bench_recording

    with pytest.raises(SystemExit, match="--parts takes some of cpu, bytes, ingest"):
        bench_recording.main(["--parts", "bytes,disk"])
