"""Findings, cause first: one row per cause with the symptoms it explains inside it (the
grouping of :mod:`agent.analysis.causes`), most severe first; Enter (or a click) opens its
evidence, every entity's included."""

from __future__ import annotations

import json
import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from agent.analysis.causes import FindingGroup, group_findings, short_entities
from agent.reader import Finding

_SEVERITY_MARK = {"critical": "✖ CRIT", "error": "✖ ERR", "warning": "▲ WARN", "info": "● INFO"}


_COLUMN_KEYS = ("severity", "since", "entity", "text")


def _identity(finding: Finding) -> tuple:
    """What makes a finding the same one while the analysis extends it."""
    return finding.rule, finding.entity, finding.start_ts


def _clock(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts)) if ts is not None else "–"


class FindingsTable(DataTable):
    """One two-line row per cause: what is wrong (and on which entities), then what to try."""

    COMPONENT_CLASSES = DataTable.COMPONENT_CLASSES | {
        f"findings--{severity}" for severity in _SEVERITY_MARK
    }

    def __init__(self) -> None:
        super().__init__(id="findings", cursor_type="row")
        #: What each row shows: one finding per group (the cause, every entity inside).
        self.findings: list[Finding] = []
        self.groups: list[FindingGroup] = []
        self._shown: list[Finding] = []
        self.border_title = "findings"

    def on_mount(self) -> None:
        for key, label in zip(
            _COLUMN_KEYS, ("SEVERITY", "SINCE (UTC)", "ENTITY", "FINDING → NEXT STEP")
        ):
            self.add_column(label, key=key)
        self.show([])

    def show(self, findings: list[Finding]) -> None:
        """Show ``findings`` grouped cause-first; the same ones with new details are updated
        in place, so the selection (and a pending Enter) survives the live analysis
        refreshing them."""
        if findings == self._shown and self.row_count:
            return
        self._shown = list(findings)
        self.groups = group_findings(findings)
        findings = [g.as_finding() for g in self.groups]
        if [_identity(f) for f in findings] == [_identity(f) for f in self.findings] and findings:
            self.findings = list(findings)
            for index, finding in enumerate(findings):
                for key, cell in zip(_COLUMN_KEYS, self._cells(finding)):
                    self.update_cell(str(index), key, cell)
            return
        selected = self.selected
        self.findings = list(findings)
        self.clear()
        self.border_title = f"findings ({len(findings)})"
        if not findings:
            self.add_row("", "", "", Text("no findings so far", style="dim"), key="none")
            return
        for index, finding in enumerate(findings):
            self.add_row(
                *self._cells(finding), key=str(index), height=2 if finding.next_step else 1
            )
        keys = [_identity(f) for f in self.findings]
        if selected is not None and _identity(selected) in keys:
            self.move_cursor(row=keys.index(_identity(selected)), animate=False)

    def _cells(self, finding: Finding) -> tuple[Text | str, ...]:
        text = Text(finding.summary)
        explains = finding.evidence.get("explains")
        if explains:
            per_entity = finding.evidence.get("entities") or {}
            starved = [
                e for e, found in per_entity.items() if any(x["rule"] in explains for x in found)
            ]
            text.append(
                f" Explains {', '.join(explains)} on {short_entities(starved)}.", style="dim"
            )
        if finding.next_step:
            text.append(f"\n→ {finding.next_step}", style="italic")
        mark = Text(
            _SEVERITY_MARK.get(finding.severity, finding.severity.upper()),
            style=self._severity_style(finding.severity),
        )
        entity = (
            short_entities(finding.entity.split(", ")) if ", " in finding.entity else finding.entity
        )
        return mark, _clock(finding.start_ts), entity, text

    def _severity_style(self, severity: str):
        if severity not in _SEVERITY_MARK:
            return ""
        return self.get_component_rich_style(f"findings--{severity}", partial=True)

    @property
    def selected(self) -> Finding | None:
        if not self.findings or not self.row_count:
            return None
        row = self.cursor_coordinate.row
        return self.findings[row] if 0 <= row < len(self.findings) else None


class EvidenceScreen(ModalScreen[float | None]):
    """A finding in full: summary, next step, window and evidence; ``j`` jumps there (replay)."""

    BINDINGS = [
        Binding("escape,enter,q", "dismiss(None)", "Close"),
        Binding("j", "jump", "Jump to time", show=True),
    ]

    def __init__(self, finding: Finding, *, can_jump: bool) -> None:
        super().__init__()
        self.finding = finding
        self.can_jump = can_jump

    def compose(self) -> ComposeResult:
        f = self.finding
        with VerticalScroll(id="evidence-box") as box:
            box.border_title = f"{f.severity.upper()} · {f.rule} · {f.entity}"
            yield Static(Text(f.summary, style="bold"), id="evidence-summary")
            if f.next_step:
                yield Static(Text(f"Next step: {f.next_step}"), id="evidence-next")
            window = f"from {_clock(f.start_ts)} to {_clock(f.end_ts) if f.end_ts else 'now'} UTC"
            yield Static(window, id="evidence-window")
            yield Static(
                Text(json.dumps(dict(f.evidence), indent=2, sort_keys=True, default=str)),
                id="evidence-body",
            )
            hint = "j: jump to its start · " if self.can_jump else ""
            yield Static(Text(f"{hint}Esc: close", style="dim"))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.can_jump if action == "jump" else True

    def action_jump(self) -> None:
        self.dismiss(self.finding.start_ts)
