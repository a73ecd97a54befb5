"""Findings read cause-first: one group per cause, its symptoms (and their evidence) inside."""

from __future__ import annotations

from datetime import datetime, timedelta

from agent.analysis.causes import EXPLAINS, group_findings, short_entities
from agent.analysis.finding import Finding
from agent.analysis.rules import RULES_BY_ID
from agent.report import Report, build_report, render_text
from agent.runs import open_read
from tests.analysis.live_runs import HOST_VARIANTS

T = datetime(2026, 1, 1)
EIGHT = tuple(f"gpu{i}" for i in range(8))


def _finding(rule: str, entity: str, start: int, end: int, severity: str = "warning") -> Finding:
    a, b = T + timedelta(seconds=start), T + timedelta(seconds=end)
    windows = [[a.isoformat(), b.isoformat()]]
    return Finding(
        rule, severity, entity, a, b, f"{rule} on {entity}", "next", {"windows": windows, "v": 1}
    )  # type: ignore[arg-type]


def test_the_relation_names_only_known_rules():
    for cause, symptoms in EXPLAINS.items():
        assert cause in RULES_BY_ID and symptoms <= set(RULES_BY_ID), cause


def test_dataloader_bound_is_one_finding_with_the_eight_starved_gpus_and_their_evidence(analysed):
    findings = analysed("live-dataloader", HOST_VARIANTS["dataloader"])
    assert len(findings) == 9  # the rules report one cause and eight symptoms
    (group,) = group_findings(findings)
    assert group.rule == "dataloader-bound" and group.entities == EIGHT
    shown = group.as_finding()
    assert shown.rule == "dataloader-bound" and shown.summary.startswith("Data loading")
    per_entity = shown.evidence["entities"]
    assert set(per_entity) == {"host", *EIGHT}
    assert all(per_entity[g][0]["rule"] == "gpu-starvation" for g in EIGHT)
    assert all("util" in per_entity[g][0]["evidence"] for g in EIGHT)
    assert shown.evidence["explains"] == ["gpu-starvation"]
    assert group.to_dict()["entities"] == list(EIGHT)


def test_a_symptom_outside_the_causes_window_stays_a_finding_of_its_own():
    cause = _finding("dataloader-bound", "host", 0, 60)
    inside = _finding("gpu-starvation", "gpu0", 5, 60)
    later = _finding("gpu-starvation", "gpu1", 100, 160)
    groups = group_findings([inside, later, cause])
    assert [(g.rule, g.entities) for g in groups] == [
        ("dataloader-bound", ("gpu0",)),
        ("gpu-starvation", ("gpu1",)),
    ]


def test_a_per_gpu_cause_explains_only_its_own_gpus_symptoms():
    groups = group_findings(
        [
            _finding("h2d-transfer", "gpu0", 0, 60),
            _finding("gpu-starvation", "gpu0", 0, 60),
            _finding("gpu-starvation", "gpu1", 0, 60, severity="critical"),
        ]
    )
    assert [(g.rule, g.entities) for g in groups] == [
        ("gpu-starvation", ("gpu1",)),  # the critical one first
        ("h2d-transfer", ("gpu0",)),
    ]


def test_copies_of_one_problem_on_several_gpus_are_one_row_and_entities_shorten():
    groups = group_findings([_finding("throttling", f"gpu{i}", 0, 30) for i in (3, 2)])
    (g,) = groups
    assert g.entities == ("gpu2", "gpu3") and g.entities_text == "gpu2, gpu3 (2)"
    assert short_entities(EIGHT) == "gpu0-7" and short_entities(("gpu0", "gpu2")) == "gpu0 +1"


def test_the_report_shows_the_cause_once_with_each_symptom_beneath(recorded):
    db, run_id = recorded("live-dataloader", HOST_VARIANTS["dataloader"])
    read = open_read(db)
    try:
        report = build_report(read, run_id, db)
    finally:
        read.close()
    text = render_text(report)
    assert "Findings (1)" in text
    head = next(line for line in text.splitlines() if "[dataloader-bound]" in line)
    assert "gpu0, gpu1, gpu2, gpu3, gpu4, gpu5, gpu6, gpu7 (8)" in head
    assert sum("explains gpu-starvation on gpu" in line for line in text.splitlines()) == 8
    assert "[gpu-starvation]" not in text
    as_json = Report.to_json(report)
    assert len(as_json["findings"]) == 9 and len(as_json["groups"]) == 1


def test_a_stall_on_the_jobs_mount_explains_every_gpus_starvation():
    """A storage cause sits on the mount (``mount:/lustre/scratch``), its symptoms on the GPUs
    that wait on it: they join it as one finding, and the post-run engine hides them as the
    storage rules declare (``supersedes``), instead of nine rows with the cause alone."""
    from agent.analysis.engine import _apply_supersedes
    from agent.analysis.rules import ALL_RULES as RULES

    for rule, mount in (
        ("storage-checkpoint-stall", "mount:/lustre/scratch"),
        ("storage-input-bound", "mount:/mnt/data"),
    ):
        cause = _finding(rule, mount, 0, 120, severity="critical")
        starved = [_finding("gpu-starvation", g, 10, 110) for g in EIGHT]
        (group,) = group_findings([*starved, cause])
        assert group.rule == rule and set(group.entities) == {mount, *EIGHT}, rule
        assert [s.rule for s in group.symptoms] == ["gpu-starvation"] * 8, rule
        assert _apply_supersedes([*starved, cause], RULES) == [cause], rule
        # a starvation outside the stall's time stays a finding of its own
        later = _finding("gpu-starvation", "gpu0", 300, 400)
        assert _apply_supersedes([later, cause], RULES) == [later, cause], rule


def test_grouping_and_the_post_run_hiding_agree_on_which_entities_a_cause_covers():
    """A cause on ``host``, ``job`` or a mount covers every entity, one on a GPU only that GPU:
    the UI's grouping and the post-run ``supersedes`` answer alike for every entity."""
    from agent.analysis.engine import _apply_supersedes
    from agent.analysis.rules import ALL_RULES as RULES

    rule = "checkpoint-stall"  # explains and supersedes gpu-starvation
    for entity, covered in (
        ("host", EIGHT),
        ("job", EIGHT),
        ("mount:/scratch", EIGHT),
        ("gpu3", ("gpu3",)),
    ):
        cause = _finding(rule, entity, 0, 120)
        starved = [_finding("gpu-starvation", g, 10, 110) for g in EIGHT]
        (group, *alone) = group_findings([cause, *starved])
        assert sorted(s.entity for s in group.symptoms) == sorted(covered), entity
        kept = _apply_supersedes([cause, *starved], RULES)
        hidden = {f.entity for f in starved} - {f.entity for f in kept if f is not cause}
        assert hidden == set(covered), entity
