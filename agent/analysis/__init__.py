"""Bottleneck analysis: vectorized rules over the recorded samples, during and after a run.

``analyze_run(con, run_id)`` analyses a whole run and stores its findings;
``agent.analysis.live.LiveAnalysis`` runs the same rules over the last window while recording.
"""

from __future__ import annotations

from agent.analysis.engine import analyze, analyze_run
from agent.analysis.finding import Finding

__all__ = ["Finding", "analyze", "analyze_run"]
