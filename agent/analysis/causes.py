"""Findings read cause-first: symptoms grouped under the finding that explains them.

When the data loader starves eight GPUs, the rules report ``dataloader-bound`` on the host and
``gpu-starvation`` on each GPU: nine rows, the cause buried among its symptoms. The UI, the
report and the exporters show them as one :class:`FindingGroup` instead: the cause, with the
starved accelerators as its entities and their findings (summary and evidence) inside it.

:data:`EXPLAINS` is the one cause → symptoms relation, by rule. A symptom joins a cause when
its rule is one the cause explains, it is on one of the cause's entities (a cause on ``host``
or ``job`` covers every entity) and at least half of its time lies inside the cause's windows.
Copies of one rule on several entities with the same windows merge first (one row for four
GPUs that throttled together). The stored findings stay one row per rule and entity.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from agent.analysis.finding import SEVERITY_RANK, Finding, sort_findings
from agent.catalog.storage import ENTITY_PREFIX as MOUNT_PREFIX

STARVATION = "gpu-starvation"
#: Cause rule → the rules whose findings it explains (on its entities, in its windows).
EXPLAINS: Mapping[str, frozenset[str]] = {
    "dataloader-bound": frozenset({STARVATION}),
    "io-bound": frozenset({STARVATION}),
    "host-memory-pressure": frozenset({STARVATION}),
    "h2d-transfer": frozenset({STARVATION}),
    "checkpoint-stall": frozenset({STARVATION}),
    "storage-input-bound": frozenset({STARVATION, "io-bound"}),
    "storage-checkpoint-stall": frozenset({STARVATION, "checkpoint-stall"}),
    "straggler": frozenset({STARVATION}),
    "hang": frozenset({STARVATION, "idle-reserved-gpu"}),
    "hardware-fault": frozenset({STARVATION, "straggler"}),
}
#: Entities that stand for the whole machine or job: a cause there covers every entity.
WIDE_ENTITIES = frozenset({"host", "job"})


def covers_job(entity: str) -> bool:
    """Whether a cause on ``entity`` explains symptoms on any of the job's entities: the
    machine or the job itself, or a filesystem the job reads from or checkpoints to (every
    accelerator waits on the same mount), not just symptoms on its own entity."""
    return entity in WIDE_ENTITIES or on_mount(entity)


def on_mount(entity: str) -> bool:
    """A filesystem's entity (``mount:/data``)."""
    return entity.startswith(MOUNT_PREFIX)


#: A symptom joins a cause when at least this share of its time lies in the cause's windows.
MIN_OVERLAP = 0.5


def _windows(f: Finding) -> list[tuple[datetime, datetime]]:
    raw = f.evidence.get("windows") or []
    spans = []
    for pair in raw:
        try:
            spans.append((datetime.fromisoformat(pair[0]), datetime.fromisoformat(pair[1])))
        except (TypeError, ValueError, IndexError):
            continue
    return spans or [(f.start, f.end or f.start)]


def _inside(symptom: Finding, causes: Sequence[Finding]) -> bool:
    mine = _windows(symptom)
    total = sum((b - a).total_seconds() for a, b in mine)
    theirs = [w for c in causes for w in _windows(c)]
    if total <= 0:  # an instant (or still open) symptom: inside if any window holds its start
        return any(a <= symptom.start <= b for a, b in theirs)
    covered = sum(
        max(0.0, (min(b1, b2) - max(a1, a2)).total_seconds())
        for a1, b1 in mine
        for a2, b2 in theirs
    )
    return covered >= MIN_OVERLAP * total


def _order(entities: Iterable[str]) -> list[str]:
    return sorted(dict.fromkeys(entities), key=lambda e: (len(e), e))


@dataclass(frozen=True)
class FindingGroup:
    """One cause (one rule's findings on one or more entities) and the symptoms it explains."""

    findings: tuple[Finding, ...]
    symptoms: tuple[Finding, ...] = ()

    @property
    def first(self) -> Finding:
        return self.findings[0]

    @property
    def rule(self) -> str:
        return self.first.rule

    @property
    def severity(self) -> str:
        worst = max(
            (*self.findings, *self.symptoms), key=lambda f: SEVERITY_RANK.get(f.severity, 0)
        )
        return worst.severity

    @property
    def entities(self) -> tuple[str, ...]:
        """The cause's own entities (unless it is the host or job) and its symptoms'."""
        own = [f.entity for f in self.findings]
        narrow = [e for e in own if e not in WIDE_ENTITIES]
        found = _order([*narrow, *(s.entity for s in self.symptoms)])
        return tuple(found or own)

    @property
    def entities_text(self) -> str:
        names = self.entities
        return names[0] if len(names) == 1 else f"{', '.join(names)} ({len(names)})"

    @property
    def entities_short(self) -> str:
        """The entities in a few characters (``gpu0-7``), for a narrow column."""
        return short_entities(self.entities)

    @property
    def lost_s(self) -> float:
        return max(f.lost_s for f in (*self.findings, *self.symptoms))

    def as_finding(self) -> Finding:
        """The group as one finding: the cause's summary and next step, every entity, and the
        evidence of each entity's finding under ``evidence["entities"]``."""
        head = self.first
        if len(self.findings) == 1 and not self.symptoms:
            return head
        per_entity: dict[str, Any] = {}
        for f in (*self.findings, *self.symptoms):
            entry = {"rule": f.rule, "severity": f.severity, "summary": f.summary,
                     "evidence": dict(f.evidence)}  # fmt: skip
            per_entity.setdefault(f.entity, []).append(entry)
        evidence = {**head.evidence, "entities": per_entity}
        if self.symptoms:
            evidence["explains"] = sorted({s.rule for s in self.symptoms})
        return replace(
            head,
            entity=", ".join(self.entities),
            severity=self.severity,  # type: ignore[arg-type]
            evidence=evidence,
            lost_s=self.lost_s,
        )

    def to_dict(self) -> dict[str, Any]:
        """``as_finding().to_dict()`` with the entities as a list."""
        out = self.as_finding().to_dict()
        out["entities"] = list(self.entities)
        return out


_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def short_entities(names: Sequence[str]) -> str:
    """``gpu0-7`` for consecutive numbered names of one prefix, else ``gpu0 +3``."""
    if len(names) <= 1:
        return names[0] if names else ""
    parts = [_NUMBERED.match(n) for n in names]
    if all(parts):
        prefixes = {p.group(1) for p in parts if p}
        numbers = sorted(int(p.group(2)) for p in parts if p)
        if len(prefixes) == 1 and numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return f"{prefixes.pop()}{numbers[0]}-{numbers[-1]}"
    return f"{names[0]} +{len(names) - 1}"


def _merge_copies(findings: Iterable[Finding]) -> list[list[Finding]]:
    """Per-entity copies of one problem (same rule, severity and windows) as one list."""
    groups: dict[tuple[Any, ...], list[Finding]] = {}
    for f in findings:
        key = (f.rule, f.severity, repr(f.evidence.get("windows")), f.start, f.end)
        groups.setdefault(key, []).append(f)
    for members in groups.values():
        members.sort(key=lambda f: (len(f.entity), f.entity))
    return list(groups.values())


def _cause_of(f: Finding, causes: Sequence[Finding]) -> Finding | None:
    for c in causes:
        if c is f or f.rule not in EXPLAINS[c.rule]:
            continue
        if (covers_job(c.entity) or c.entity == f.entity) and _inside(f, [c]):
            return c
    return None


def group_findings(findings: Iterable[Finding]) -> list[FindingGroup]:
    """Findings as cause-first groups, worst first (then most time lost, then earliest).

    A cause explained by another (a straggler by a hardware fault) joins it with its own
    symptoms."""
    ordered = sort_findings(findings)
    causes = [f for f in ordered if f.rule in EXPLAINS]
    parent = {id(f): c for f in ordered if (c := _cause_of(f, causes)) is not None}

    def root(f: Finding) -> Finding:
        seen = {id(f)}
        while id(f) in parent and id(parent[id(f)]) not in seen:
            f = parent[id(f)]
            seen.add(id(f))
        return f

    symptoms_of: dict[int, list[Finding]] = {}
    for f in ordered:
        if id(f) in parent:
            symptoms_of.setdefault(id(root(f)), []).append(f)
    rest = [f for f in ordered if id(f) not in parent]
    rank = {id(f): i for i, f in enumerate(ordered)}
    groups = []
    for members in _merge_copies(rest):
        symptoms = [s for m in members for s in symptoms_of.get(id(m), [])]
        groups.append(FindingGroup(tuple(members), tuple(_by_entity(symptoms))))
    return sorted(
        groups,
        key=lambda g: (
            -SEVERITY_RANK.get(g.severity, 0),
            -g.lost_s,
            min(rank[id(f)] for f in g.findings),
        ),
    )


def _by_entity(symptoms: list[Finding]) -> list[Finding]:
    return sorted(symptoms, key=lambda f: (len(f.entity), f.entity, f.rule))


def group_mappings(findings: Iterable[Mapping[str, Any]]) -> list[FindingGroup]:
    """:func:`group_findings` of finding mappings (the live context's, a JSON report's)."""
    return group_findings(Finding.from_mapping(f) for f in findings)
