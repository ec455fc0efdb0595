"""Overlapping runs of the edge deployment workflow: the devices end on the newest approved package.

The synthesized state machine runs in moto's executor with the real functions
(tests/edge_deployment/workflow_harness.py), with one stage (the app's thing group): the races are
between runs, whatever the stages (test_stages_workflow.py plays the stages). A test holds one run right
before its CreateDeployment call reaches Greengrass and lets the other one through, to play each race in
its worst order.
"""

from __future__ import annotations

import threading

import pytest
from moto import mock_aws

from tests.edge_deployment.conftest import ACCOUNT, GROUP, REGION
from tests.edge_deployment.workflow_harness import MODEL_COMPONENT, EdgeWorkflow

GROUP_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/tag-inspection-line-1"
WAIT = 60.0
ONE_STAGE = {"name": "fleet", "thing_groups": ["tag-inspection-line-1"], "soak_minutes": 0, "manual_approval": False}


def _approval(arn: str) -> dict:
    return {
        "trigger": "model-package-approved",
        "model_package_arn": arn,
        "model_package_group_name": GROUP,
        "event_id": "e",
    }


@pytest.fixture
def edge(workflow_stack, monkeypatch):
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}):
        workflow = EdgeWorkflow(workflow_stack.template, stages=[ONE_STAGE])
        workflow.install(monkeypatch)
        yield workflow


class Hold:
    """Holds the first CreateDeployment call for `model_version` until released (the rest pass)."""

    def __init__(self, edge: EdgeWorkflow, model_version: str) -> None:
        self.reached, self.release = threading.Event(), threading.Event()
        self.model_version = model_version
        self._held = False
        edge.greengrass.before_create = self

    def __call__(self, request) -> None:
        if not self._held and request["components"][MODEL_COMPONENT]["componentVersion"] == self.model_version:
            self._held = True
            self.reached.set()
            assert self.release.wait(WAIT), "the held run was never released"


def _outcomes(edge: EdgeWorkflow) -> dict[str, list[str]]:
    by_subject: dict[str, list[str]] = {}
    for notification in edge.notifications():
        outcome = notification["subject"].removeprefix("[tag-inspect] ").split(":")[0].removeprefix("Edge rollout ")
        by_subject.setdefault(outcome, []).append(notification["subject"])
    return by_subject


def test_two_approvals_close_together_end_on_the_newer_package_whatever_reaches_greengrass_last(edge):
    older, newer = edge.register(), edge.register()
    edge.approve(older)
    hold = Hold(edge, "1.0.1")
    run_older = edge.start(_approval(older), "approved-v1")
    # v1's run has checked that it is the newest approved and is about to create its deployment ...
    assert hold.reached.wait(WAIT)
    edge.approve(newer)  # ... when v2 is approved, and v2's run deploys first
    run_newer = edge.start(_approval(newer), "approved-v2")
    while not edge.greengrass.created:  # v2's deployment is made
        threading.Event().wait(0.05)
    hold.release.set()  # v1's deployment reaches Greengrass last and replaces v2's
    newer_run, older_run = edge.wait(run_newer), edge.wait(run_older)

    assert newer_run["status"] == "SUCCEEDED" and older_run["status"] == "SUCCEEDED", (newer_run, older_run)
    assert edge.greengrass.model_on_group(GROUP_ARN) == "1.0.2"  # the devices run the newer package
    versions = [d["components"][MODEL_COMPONENT]["componentVersion"] for d in edge.greengrass.created]
    assert versions == ["1.0.2", "1.0.1", "1.0.2"]  # v2, replaced by v1, deployed again
    assert "CountRedeploy" in edge.visited(run_newer)
    assert edge.visited(run_older)[-2:] == ["NotifyOvertaken", "Overtaken"]
    outcomes = _outcomes(edge)
    assert [len(outcomes.get(o, [])) for o in ("SUCCEEDED", "SUPERSEDED")] == [1, 1], outcomes
    assert outcomes["SUCCEEDED"] == ["[tag-inspect] Edge rollout SUCCEEDED: model version 1.0.2 through stage fleet"]


def test_an_approval_processed_after_a_newer_one_deploys_nothing(edge):
    older, newer = edge.register(), edge.register()
    edge.approve(newer)
    deployed = edge.wait(edge.start(_approval(newer), "approved-v2"))
    assert deployed["status"] == "SUCCEEDED" and edge.greengrass.model_on_group(GROUP_ARN) == "1.0.2"
    edge.approve(older)  # approved later, e.g. by mistake, or its event arrived late
    late = edge.start(_approval(older), "approved-v1")
    assert edge.wait(late)["status"] == "SUCCEEDED"
    assert edge.visited(late)[-3:] == ["DeploymentSuperseded", "NotifySuperseded", "NewerPackageApproved"]
    assert len(edge.greengrass.created) == 1 and edge.greengrass.model_on_group(GROUP_ARN) == "1.0.2"
    # the resolver took the event's package (v1), not the newest approved one (v2)
    (resolved,) = [
        event for handler, event in edge.calls if handler == "create_deployment" and event["package"]["version"] == 1
    ]
    assert resolved["package"]["arn"] == older
    outcomes = _outcomes(edge)
    assert outcomes["SUPERSEDED"] == ["Edge rollout SUPERSEDED: model package v1 not deployed to stage fleet"]


def test_the_same_package_from_the_approval_and_the_pipeline_is_rolled_out_once_and_reported_once(edge):
    package = edge.register()
    edge.approve(package)
    hold = Hold(edge, "1.0.1")
    by_approval = edge.start(_approval(package), "approved-v1")
    assert hold.reached.wait(WAIT)  # both runs found no deployment to reuse ...
    by_pipeline = edge.start({"trigger": "workflow-pipeline"}, "pipeline")
    while not edge.greengrass.created:
        threading.Event().wait(0.05)
    hold.release.set()  # ... and the approval's deployment replaces the pipeline's
    first, second = edge.wait(by_approval), edge.wait(by_pipeline)

    assert first["status"] == "SUCCEEDED" and second["status"] == "SUCCEEDED", (first, second)
    assert edge.greengrass.model_on_group(GROUP_ARN) == "1.0.1"
    outcomes = _outcomes(edge)
    assert [len(outcomes.get(o, [])) for o in ("SUCCEEDED", "SUPERSEDED", "CANCELED")] == [1, 1, 0], outcomes
