"""A third-party plug-in as pip would leave it: a module and a dist-info with entry points."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

_PLUGIN = """
from agent.catalog import metric
from agent.source import EntityKind, SourceSpec

SPEC = SourceSpec(
    name="fakeplug",
    label="Fake plug-in",
    metrics=(metric("fakeplug.level", "1", "gauge", "A level.", source="fakeplug"),),
    entity_kinds=(EntityKind("port", "fp:.+"),),
)
TWIN = SourceSpec(name="fakeplug", label="Twin", metrics=(), entity_kinds=())
NOT_A_SPEC = 42
"""


def install_fake_distribution(
    root: Path, monkeypatch: pytest.MonkeyPatch, entry_points: str
) -> None:
    """A real (unpacked) distribution on sys.path, as pip leaves one: importlib finds it."""
    (root / "aw_fake_plugin.py").write_text(_PLUGIN)
    dist = root / "aw_fake_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: aw-fake-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "aw_fake_plugin", raising=False)
