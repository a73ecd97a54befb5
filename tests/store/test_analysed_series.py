"""The writer decides which series get stored buckets from :mod:`agent.analysed`, the module
the analysis frame reads its series from too; the store imports no analysis module for it."""

from __future__ import annotations

import subprocess
import sys

from agent.analysed import analysed_series_where
from agent.analysis.frame import analysed_series_where as frame_where


def test_the_store_picks_bucketed_series_without_importing_the_analysis_frame():
    probe = (
        "import sys, agent.store, agent.store_buckets as b; b._analysed_where(); "
        "print(sorted(m for m in sys.modules if m.startswith('agent.analysis.frame')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_frame_and_the_writer_pick_the_same_series():
    assert frame_where is analysed_series_where
    where = analysed_series_where()
    assert "gpu.utilization" in where and "NOT contains(entity, '/')" in where
