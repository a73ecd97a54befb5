"""The core never loads Textual; the TUI reads data only through agent.reader."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: What tui/ may not import directly: storage, devices and the collectors behind the reader.
FORBIDDEN_IN_TUI = ("duckdb", "collectors", "agent.store", "agent.sampler", "pynvml", "psutil")


def _loaded_after(imports: list[str]) -> set[str]:
    code = (
        f"import sys, json\nfor m in {imports!r}: __import__(m)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    return set(json.loads(out))


@pytest.mark.parametrize(
    "modules",
    [
        ["agent.app.cli"],
        ["agent.app.session", "agent.app.commands", "agent.reader", "agent.recorded"],
        ["collectors.host", "collectors.process"],
        ["exporters"],
    ],
)
def test_core_imports_do_not_load_textual(modules):
    loaded = _loaded_after(modules)
    assert not {m for m in loaded if m == "textual" or m.startswith("textual.")}


def test_cli_parser_does_not_load_duckdb():
    assert "duckdb" not in _loaded_after(["agent.app.cli"])


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    names = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_tui_reads_data_only_through_the_reader():
    files = sorted((REPO / "tui").rglob("*.py"))
    assert len(files) > 5
    offenders = {
        f"{path.relative_to(REPO)}: {name}"
        for path in files
        for name in _imports(path)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_IN_TUI)
    }
    assert not offenders


def _is_ui(name: str) -> bool:
    return name in ("textual", "tui") or name.startswith(("textual.", "tui."))


def test_core_sources_never_import_textual():
    """Textual nowhere in the core; ``tui`` only lazily, inside the CLI's view/watch handlers."""
    core = [
        path
        for package in ("agent", "collectors", "exporters")
        for path in (REPO / package).rglob("*.py")
    ]
    assert not [str(p) for p in core if any(n.startswith("textual") for n in _imports(p))]
    assert not [str(p) for p in core if any(_is_ui(n) for n in _imports(p, top_level_only=True))]


def test_styles_ship_inside_the_tui_package():
    from tui.app import AccelwatchApp

    styles = Path(AccelwatchApp.CSS_PATH)
    assert styles.is_file() and styles.parent == REPO / "tui"
