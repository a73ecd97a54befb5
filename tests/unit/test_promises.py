"""docs/promises.md is checked item by item: every section names tests that exist, and the
numbers it promises are the ones the code uses."""

from __future__ import annotations

import re

import pytest

from tests.helpers import REPO

PAGE = (REPO / "docs" / "promises.md").read_text()
SECTIONS = (
    "The job's signals",
    "The job's output",
    "Environment keys read",
    "What is lost on each fault",
    "File modes",
    "Readers",
)


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", PAGE, re.M | re.S)
    assert match, f"docs/promises.md has no section {title!r}"
    return match.group(1)


def _defined_tests() -> set[str]:
    return {
        name
        for path in (REPO / "tests").rglob("test_*.py")
        for name in re.findall(r"def (test_\w+)\(", path.read_text())
    }


@pytest.mark.parametrize("title", SECTIONS)
def test_each_promise_section_names_tests_that_exist(title):
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", _section(title)))
    assert named, f"section {title!r} names no test"
    missing = named - _defined_tests()
    assert not missing, f"section {title!r} names tests that do not exist: {sorted(missing)}"


def test_promised_numbers_are_the_codes_numbers():
    from agent.app.job import DEFAULT_STOP_TIMEOUT_S
    from agent.readserver import MAX_ROWS, QUERY_TIMEOUT_S
    from agent.store import AGENT_DB_MEMORY, MAX_FLUSH_INTERVAL
    from agent.store_writer import CLOSE_RETRY_S
    from exporters.otlp import FAILING_SHUTDOWN_BUDGET_S, SHUTDOWN_BUDGET_S

    assert f"default **{DEFAULT_STOP_TIMEOUT_S:g}**" in _section("The job's signals")
    lost = _section("What is lost on each fault")
    assert f"at most {MAX_FLUSH_INTERVAL:g} s" in lost
    assert f"capped at {AGENT_DB_MEMORY.replace('MB', ' MB')}" in lost
    assert f"retried for {CLOSE_RETRY_S:g} s" in lost
    assert (
        f"at most {SHUTDOWN_BUDGET_S:g} s ({FAILING_SHUTDOWN_BUDGET_S:g} s while failing)" in lost
    )
    readers = _section("Readers")
    assert f"after {QUERY_TIMEOUT_S:g} s" in readers
    assert f"at most {MAX_ROWS:,} rows" in readers


def test_promised_file_modes_are_stated():
    modes = _section("File modes")
    for needed in ("`.wal`", "**0600**", "**0700**", "`<db>.sock`", "umask 0o077"):
        assert needed in modes
