"""The TPU benchmark imports, parses ``--help`` and documents its sides (speed: the benchmark)."""

from __future__ import annotations

import importlib

import pytest


def test_bench_tpu_imports_and_help_parses(capsys):
    module = importlib.import_module("benchmarks.bench_tpu")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out
    assert "Exits 1 on a MISS" in (module.__doc__ or "")
