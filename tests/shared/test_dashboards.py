"""The apps' dashboards read what the code writes: the log messages and fields their queries name, the
state machines and log groups they point at, as the synthesized templates hold them.

A dashboard cannot fail a deploy when a query names a field nobody logs; it only shows nothing. These
tests tie each query to the code that writes its lines.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from labeling.runtime import rounds
from shared.config import load_settings
from tests.e2e.templates import Apps, synthesize
from tests.helpers.cdk_assembly import REPO_ROOT
from tests.tools.dashboard_preview import synthesized_dashboards
from training.steps import train
from training.steps.gate import GateDecision

LABELING_HANDLERS = (REPO_ROOT / "labeling" / "runtime" / "handlers.py").read_text(encoding="utf-8")
STEP_CLI = (REPO_ROOT / "training" / "steps" / "cli.py").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return synthesized_dashboards()


@pytest.fixture(scope="module")
def apps() -> Apps:
    return synthesize(load_settings(REPO_ROOT / "config.yaml"))


def _queries(body: dict[str, Any]) -> dict[str, str]:
    return {w["properties"]["title"]: w["properties"]["query"] for w in body["widgets"] if w["type"] == "log"}


def _source_groups(query: str) -> list[str]:
    return re.findall(r"SOURCE '([^']+)'", query)


def test_the_labeling_queries_name_messages_and_fields_the_handlers_log(dashboards):
    queries = _queries(dashboards["tag-inspect-labeling"])
    sent, written = queries["Images sent to labeling per day"], queries["Verified labels written per day"]
    assert 'logger.info("images selected", extra={"selection": result})' in LABELING_HANDLERS
    assert 'filter message = "images selected"' in sent and "sum(selection.images)" in sent
    assert '"images": len(selected)' in Path(rounds.__file__).read_text(encoding="utf-8")
    assert LABELING_HANDLERS.count('logger.info("labels written", extra={"cursor": cursor.to_json()})') == 2
    cursor = rounds.WriteCursor().to_json()
    for field in re.findall(r"cursor\.(\w+)", written):
        assert field in cursor, field
    assert 'filter message = "labels written" and cursor.done = 1' in written


def test_the_labeling_dashboard_reads_the_logs_of_its_own_functions_and_workflow(dashboards, apps):
    workflow = apps.labeling_workflow
    groups = {
        workflow.render(r["Properties"]["LogGroupName"])
        if "LogGroupName" in r["Properties"]
        else workflow.physical_name(lid)
        for lid, r in workflow.of_type("AWS::Logs::LogGroup").items()
    }
    (machine,) = workflow.of_type("AWS::StepFunctions::StateMachine").values()
    name = workflow.render(machine["Properties"]["StateMachineName"])
    for title, query in _queries(dashboards["tag-inspect-labeling"]).items():
        for group in _source_groups(query):
            assert group in groups, (title, group)
    assert _source_groups(_queries(dashboards["tag-inspect-labeling"])["Failed rounds (and why)"]) == [
        f"/aws/vendedlogs/states/{name}"
    ]


def test_the_training_queries_name_the_evaluation_line_s_fields_and_the_best_line(dashboards):
    queries = _queries(dashboards["tag-inspect-training"])
    assert '{"evaluation": evaluation.report.metrics, "gate": evaluation.report.gate' in STEP_CLI
    gate = GateDecision("register", 0.6, 0.5, 0.02, "ds-1", None, "first model").to_json()
    for title in ("Gate verdicts (register, no change, fail)", "Test mAP50-95 per run (the gate's metric)"):
        assert _source_groups(queries[title]) == ["/aws/sagemaker/ProcessingJobs"]
        for field in re.findall(r"gate\.(\w+)", queries[title]):
            assert field in gate, (title, field)
        assert set(re.findall(r"evaluation\.(\w+)", queries[title])) <= {"mAP50", "mAP50-95", "precision", "recall"}
    best = queries["Best validation mAP50-95 of each training job"]
    assert f'filter @message like "{train.BEST_PREFIX}"' in best and "mAP50-95=" in best
    assert _source_groups(best) == ["/aws/sagemaker/TrainingJobs"]


def test_the_loop_dashboard_shows_each_app_s_real_state_machine(dashboards, apps):
    body = dashboards["tag-inspect-loop"]
    arns = [
        series[-2 if isinstance(series[-1], dict) else -1]
        for widget in body["widgets"]
        if widget["type"] == "metric"
        for series in widget["properties"]["metrics"]
        if series[0] == "AWS/States"
    ]
    names = set()
    for template in (apps.labeling_workflow, apps.training_workflow, apps.edge_workflow):
        (machine,) = template.of_type("AWS::StepFunctions::StateMachine").values()
        names.add(template.render(machine["Properties"]["StateMachineName"]))
    assert {arn.rsplit(":", 1)[-1] for arn in arns} == names
    assert all(arn.startswith("arn:aws:states:eu-west-1:123456789012:stateMachine:") for arn in arns)
