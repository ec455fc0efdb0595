"""Staged promotion, path by path: the synthesized state machine in moto's executor with the real functions.

Greengrass, IoT and the devices' metrics are the harness's fakes (tests/edge_deployment/workflow_harness.py;
every request checked against botocore's model of the service). The stages are the example's: pilot
(tag-inspection-line-1-pilot, one device) then production (tag-inspection-line-1, two devices).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from moto import mock_aws

from edge_deployment import promotion
from tests.edge_deployment.conftest import ACCOUNT, GROUP, REGION
from tests.edge_deployment.workflow_harness import (
    FLEET_GROUP,
    INFERENCE_COMPONENT,
    INFERENCE_VERSION,
    MODEL_COMPONENT,
    PILOT_DEVICES,
    PILOT_GROUP,
    EdgeWorkflow,
)
from tests.helpers import asl

PILOT_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/{PILOT_GROUP}"
FLEET_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/{FLEET_GROUP}"
PILOT_DEVICE = PILOT_DEVICES[0]


def _approval(arn: str) -> dict[str, Any]:
    return {"trigger": "model-package-approved", "model_package_arn": arn, "model_package_group_name": GROUP}


@pytest.fixture
def moto():
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}):
        yield


def _workflow(workflow_stack, monkeypatch, **options: Any) -> EdgeWorkflow:
    workflow = EdgeWorkflow(workflow_stack.template, **options)
    workflow.install(monkeypatch)
    return workflow


def _deploy(edge: EdgeWorkflow, name: str) -> tuple[str, dict[str, Any]]:
    package = edge.register()
    edge.approve(package)
    execution = edge.start(_approval(package), name)
    return execution, edge.wait(execution)


def _targets(edge: EdgeWorkflow) -> list[tuple[str, str | None]]:
    """(thing group, model version) of every deployment created, in order (None: no model component)."""
    return [
        (
            d["targetArn"].rsplit("/", 1)[-1],
            d["components"][MODEL_COMPONENT]["componentVersion"] if MODEL_COMPONENT in d["components"] else None,
        )
        for d in edge.greengrass.created
    ]


def test_a_healthy_model_reaches_the_pilot_first_then_production(workflow_stack, monkeypatch, moto):
    edge = _workflow(workflow_stack, monkeypatch)
    execution, described = _deploy(edge, "v1")
    assert described["status"] == "SUCCEEDED", described
    assert _targets(edge) == [(PILOT_GROUP, "1.0.1"), (FLEET_GROUP, "1.0.1")]  # pilot first
    visited = edge.visited(execution)
    assert visited.count("CheckHealth") == 2 and visited[-2:] == ["NotifySuccess", "Deployed"]
    # production was deployed only after the pilot's health gate passed
    assert visited.index("NotifyStagePassed") < [i for i, s in enumerate(visited) if s == "CreateDeployment"][1]
    subjects = [n["subject"] for n in edge.notifications()]
    assert subjects == [
        "[tag-inspect] Edge stage pilot passed: model version 1.0.1",
        "[tag-inspect] Edge rollout SUCCEEDED: model version 1.0.1 through stage production",
    ]
    # each device was asked for its own heartbeats with the new version, in the devices' namespace
    asked = [
        {d["Name"]: d["Value"] for d in q["MetricStat"]["Metric"]["Dimensions"]}
        for request in edge.cloudwatch.requests
        for q in request["MetricDataQueries"]
        if q["MetricStat"]["Metric"]["MetricName"] == "DeviceHeartbeats"
    ]
    assert {"ThingGroup": FLEET_GROUP, "Device": PILOT_DEVICE, "ModelVersion": "1.0.1"} in asked
    # each stage has its own rollout: the pilot's slower one from config.yaml
    pilot_request = edge.greengrass.created[0]
    assert pilot_request["deploymentName"] == f"{FLEET_GROUP}-{PILOT_GROUP}"


def test_a_model_that_does_not_load_on_the_pilot_is_rolled_back_there_and_never_reaches_production(
    workflow_stack, monkeypatch, moto
):
    edge = _workflow(workflow_stack, monkeypatch)
    assert _deploy(edge, "v1")[1]["status"] == "SUCCEEDED"
    edge.notifications()
    edge.cloudwatch.not_loading.add(PILOT_DEVICE)  # the new model fails to load: the device keeps serving 1.0.1
    execution, described = _deploy(edge, "v2")

    assert described["status"] == "FAILED" and described["error"] == "StageRolledBack", described
    assert _targets(edge)[2:] == [(PILOT_GROUP, "1.0.2"), (PILOT_GROUP, "1.0.1")]  # put back; production untouched
    assert edge.greengrass.model_on_group(FLEET_ARN) == "1.0.1"
    rollback = edge.greengrass.created[-1]
    # exactly what the pilot ran before, as it was deployed
    assert rollback["components"] == edge.greengrass.created[0]["components"]
    assert "NotServingNewVersion" in edge.visited(execution)
    (report,) = edge.notifications()
    assert report["subject"] == "Edge rollout stopped at stage pilot: model package v2 rolled back"
    assert f"{PILOT_DEVICE}: no heartbeat with model version 1.0.2" in report["message"]
    # the line names every component the pilot ran before (the disk spooler plugin too), with its version
    put_back = f"Thing group {PILOT_GROUP} put back on: " + ", ".join(
        f"{name} {spec['componentVersion']}" for name, spec in sorted(edge.greengrass.created[0]["components"].items())
    )
    assert put_back in report["message"] and f"{INFERENCE_COMPONENT} {INFERENCE_VERSION}" in put_back
    assert "Not deployed (the model stopped here): stage(s) production" in report["message"]


@pytest.mark.parametrize(
    ("figures", "bound"),
    [
        ({"LatencyMs": 2500.0}, "p95 latency 2500 ms above max_latency_p95_ms 1000"),
        ({"FramesFailedTotal": 60.0}, "failed frame rate 0.091 above max_failed_frame_rate 0.02 (60 of 660)"),
        ({"DefectFrames": 600.0}, "defect rate 1.000 differs from the test split's 0.100 by more than"),
        ({"DefectFrames": 0.0, "ExpectedEmptyShare": 0.4}, "defect rate 0.000 differs from the test split's 0.600"),
        ({"Frames": 3.0, "DefectFrames": 0.0}, "served 3 frames, fewer than min_frames 20"),
    ],
    ids=["slow", "crashing-frames", "flags-every-tag", "flags-none", "idle"],
)
def test_a_pilot_that_fails_the_health_gate_is_rolled_back_naming_the_device_and_the_bound(
    workflow_stack, monkeypatch, moto, figures, bound
):
    edge = _workflow(workflow_stack, monkeypatch)
    edge.cloudwatch.figures[PILOT_DEVICE] = figures
    execution, described = _deploy(edge, "v1")
    assert described["status"] == "FAILED" and described["error"] == "StageRolledBack"
    assert "HealthGateFailed" in edge.visited(execution)
    # the pilot had no deployment before: it is put back on none; production never got one
    assert _targets(edge) == [(PILOT_GROUP, "1.0.1"), (PILOT_GROUP, None)]
    assert edge.greengrass.created[-1]["components"] == {}
    (report,) = edge.notifications()
    assert f"  - {PILOT_DEVICE}: " in report["message"] and bound in report["message"], report["message"]
    assert f"Thing group {PILOT_GROUP} put back on: no components" in report["message"]


def _approval_request(edge: EdgeWorkflow, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for notification in edge.notifications():
            if notification["subject"].startswith("[tag-inspect] Approve the next edge stage"):
                return dict(json.loads(notification["message"]))
        time.sleep(0.1)
    raise AssertionError("no approval request was published")


MANUAL_PILOT = [
    {"name": "pilot", "thing_groups": [PILOT_GROUP], "soak_minutes": 1, "manual_approval": True},
    {"name": "production", "thing_groups": [FLEET_GROUP], "soak_minutes": 0, "manual_approval": False},
]


def _pilot_awaiting_approval(workflow_stack, monkeypatch, name: str) -> tuple[Any, str, dict[str, Any]]:
    """A model approved into MANUAL_PILOT's workflow, the run `name` waiting for the pilot's approval:
    (the workflow, the run, the approval request it published)."""
    edge = _workflow(workflow_stack, monkeypatch, stages=MANUAL_PILOT)
    package = edge.register()
    edge.approve(package)
    execution = edge.start(_approval(package), name)
    return edge, execution, _approval_request(edge)


def test_an_approved_pilot_is_promoted_to_production(workflow_stack, monkeypatch, moto):
    edge, execution, request = _pilot_awaiting_approval(workflow_stack, monkeypatch, "approve")
    assert request["stage"] == "pilot" and request["model_version"] == "1.0.1"
    assert request["health"]["healthy"] is True
    assert _targets(edge) == [(PILOT_GROUP, "1.0.1")]  # production waits for the answer
    promotion.approve(edge.sfn, token=request["task_token"], by="quality-lead", note="line looks fine")
    described = edge.wait(execution)
    assert described["status"] == "SUCCEEDED", described
    assert _targets(edge) == [(PILOT_GROUP, "1.0.1"), (FLEET_GROUP, "1.0.1")]


def test_a_rejected_pilot_is_rolled_back_with_the_reason(workflow_stack, monkeypatch, moto):
    edge, execution, request = _pilot_awaiting_approval(workflow_stack, monkeypatch, "reject")
    promotion.reject(edge.sfn, token=request["task_token"], by="quality-lead", reason="flags clean tags")
    described = edge.wait(execution)
    assert described["status"] == "FAILED" and described["error"] == "StageRolledBack"
    assert "ApprovalRejected" in edge.visited(execution)
    assert _targets(edge) == [(PILOT_GROUP, "1.0.1"), (PILOT_GROUP, None)]
    (report,) = edge.notifications()
    # moto's SendTaskFailure drops the cause (AWS keeps it): the request itself is checked in test_promotion.py
    assert "the next stage was not approved (Rejected" in report["message"]


@pytest.mark.parametrize("error", ["Nope", None], ids=["typo", "no-error-named"])
def test_any_failure_sent_for_an_approval_is_a_rejection_asked_once(workflow_stack, monkeypatch, moto, error):
    edge, execution, request = _pilot_awaiting_approval(workflow_stack, monkeypatch, "not-rejected-by-name")
    # e.g. the console's "send task failure", or the CLI without --error Rejected
    named = {"error": error} if error else {}
    edge.sfn.send_task_failure(taskToken=request["task_token"], cause="not this one", **named)
    described = edge.wait(execution, timeout=30)  # a retry would publish a new request and wait on it
    assert described["status"] == "FAILED" and described["error"] == "StageRolledBack", described
    visited = edge.visited(execution)
    assert visited.count("RequestApproval") == 1 and "ApprovalRejected" in visited
    assert _targets(edge) == [(PILOT_GROUP, "1.0.1"), (PILOT_GROUP, None)]
    notifications = edge.notifications()
    assert not [n for n in notifications if n["subject"].startswith("[tag-inspect] Approve the next edge stage")]
    (report,) = notifications
    assert f"the next stage was not approved ({error or ''}" in report["message"]


def test_the_approval_request_retries_only_the_publish_s_transient_errors(workflow_stack):
    (machine,) = asl.state_machines(workflow_stack.template, {}).values()
    (state,) = [state for name, state in asl.iter_states(machine.definition) if name == "RequestApproval"]
    retried = [error for rule in state["Retry"] if rule.get("MaxAttempts", 3) > 0 for error in rule["ErrorEquals"]]
    # the publish's own throttling and faults; an answer (any error sent for the token) is never retried
    assert retried and all(error.startswith("SNS.") for error in retried), retried


def test_an_approval_nobody_gives_times_out_and_fails_safe(workflow_stack, monkeypatch, moto):
    edge = _workflow(workflow_stack, monkeypatch, stages=MANUAL_PILOT, approval_timeout_seconds=1)
    execution, described = _deploy(edge, "timeout")
    assert described["status"] == "FAILED" and described["error"] == "StageRolledBack"
    assert "ApprovalTimedOut" in edge.visited(execution)
    assert _targets(edge) == [(PILOT_GROUP, "1.0.1"), (PILOT_GROUP, None)]  # production never deployed
    notifications = edge.notifications()
    report = [n for n in notifications if n["subject"].startswith("Edge rollout stopped")]
    assert report and "nobody approved the next stage within 86400 seconds" in report[0]["message"]
    (request,) = [
        json.loads(n["message"]) for n in notifications if n["subject"].startswith("[tag-inspect] Approve the next")
    ]
    # the request's own token, answered after the timeout: refused, and the person is told the stage was rolled back
    with pytest.raises(promotion.PromotionError, match="a stage that timed out has been rolled back"):
        promotion.approve(edge.sfn, token=request["task_token"], by="late")
    assert _targets(edge) == [(PILOT_GROUP, "1.0.1"), (PILOT_GROUP, None)]  # and nothing was promoted


@pytest.mark.parametrize(
    "case",
    [
        ({PILOT_GROUP: (), FLEET_GROUP: ("a", "b")}, False, f"thing group {PILOT_GROUP} has no devices"),
        ({FLEET_GROUP: ("a", "b")}, False, f"thing group {PILOT_GROUP} does not exist"),
        (None, True, f"runs {INFERENCE_COMPONENT} {INFERENCE_VERSION}, which no longer exists"),
    ],
    ids=["empty-group", "missing-group", "previous-version-gone"],
)
def test_bad_stage_input_stops_the_stage_safe_before_it_deploys(workflow_stack, monkeypatch, moto, case):
    groups, deleted, reason = case
    edge = _workflow(workflow_stack, monkeypatch)
    if deleted:
        assert _deploy(edge, "v1")[1]["status"] == "SUCCEEDED"
        edge.notifications()
        edge.greengrass.deleted_components.add(
            f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:{INFERENCE_COMPONENT}:versions:{INFERENCE_VERSION}"
        )
    else:
        edge.greengrass.groups = dict(groups)
    before = len(edge.greengrass.created)
    execution, described = _deploy(edge, "bad")
    assert described["status"] == "FAILED" and described["error"] == "StageInputError"
    assert reason in described["cause"] and "Nothing was deployed" in described["cause"]
    assert len(edge.greengrass.created) == before  # nothing deployed, nothing promoted
    assert edge.visited(execution)[-2:] == ["NotifyFailure", "DeploymentFailed"]
    (notification,) = edge.notifications()
    assert reason in notification["message"]


def test_a_failing_telemetry_query_does_not_promote_the_stage(workflow_stack, monkeypatch, moto):
    edge = _workflow(workflow_stack, monkeypatch)
    edge.cloudwatch.failure = "AccessDenied"
    execution, described = _deploy(edge, "v1")
    assert described["status"] == "FAILED" and described["error"] == "StageRolledBack"
    assert "HeartbeatQueryFailed" in edge.visited(execution)
    assert _targets(edge) == [(PILOT_GROUP, "1.0.1"), (PILOT_GROUP, None)]
    (report,) = edge.notifications()
    assert (
        "could not be judged from its devices telemetry (HealthQueryError" in report["message"]
        and "AccessDenied" in report["message"]
    )


def _rollback(edge: EdgeWorkflow, package: str, stages: list[str], name: str) -> tuple[str, dict[str, Any]]:
    execution = edge.start(
        {"trigger": "rollback", "model_package_arn": package, "model_package_group_name": GROUP, "stages": stages},
        name,
    )
    return execution, edge.wait(execution)


def test_a_rollback_on_demand_puts_the_named_stage_back_on_an_earlier_version(workflow_stack, monkeypatch, moto):
    edge = _workflow(workflow_stack, monkeypatch)
    first = edge.register()
    edge.approve(first)
    assert edge.wait(edge.start(_approval(first), "v1"))["status"] == "SUCCEEDED"
    assert _deploy(edge, "v2")[1]["status"] == "SUCCEEDED"
    edge.notifications()
    execution, described = _rollback(edge, first, ["production"], "back-to-v1")
    assert described["status"] == "SUCCEEDED", described
    assert edge.greengrass.model_on_group(FLEET_ARN) == "1.0.1"  # production put back
    assert edge.greengrass.model_on_group(PILOT_ARN) == "1.0.2"  # the pilot not named: untouched
    visited = edge.visited(execution)
    assert visited.count("BeginStage") == 1 and "CheckServing" in visited  # devices must report v1 again
    assert "RequestApproval" not in visited
    (report,) = edge.notifications()
    assert report["subject"] == "[tag-inspect] Edge rollout SUCCEEDED: model version 1.0.1 through stage production"


def test_a_rollback_on_demand_leaves_a_version_that_was_deleted(workflow_stack, monkeypatch, moto):
    edge = _workflow(workflow_stack, monkeypatch)
    first = edge.register()
    edge.approve(first)
    assert edge.wait(edge.start(_approval(first), "v1"))["status"] == "SUCCEEDED"
    assert _deploy(edge, "v2")[1]["status"] == "SUCCEEDED"
    # the bad version's component is deleted first (it must never run again): the rollback still goes ahead
    edge.greengrass.deleted_components.add(
        f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:{MODEL_COMPONENT}:versions:1.0.2"
    )
    _, described = _rollback(edge, first, ["production"], "leave-deleted-v2")
    assert described["status"] == "SUCCEEDED", described
    assert edge.greengrass.model_on_group(FLEET_ARN) == "1.0.1"


def test_a_failed_rollback_on_demand_is_reported_and_does_not_redeploy_the_version_it_leaves(
    workflow_stack, monkeypatch, moto
):
    edge = _workflow(workflow_stack, monkeypatch)
    first = edge.register()
    edge.approve(first)
    assert edge.wait(edge.start(_approval(first), "v1"))["status"] == "SUCCEEDED"
    assert _deploy(edge, "v2")[1]["status"] == "SUCCEEDED"
    edge.notifications()
    edge.cloudwatch.not_loading.add("line-1-cam-2")  # this device does not report 1.0.1 again
    created = len(edge.greengrass.created)
    execution, described = _rollback(edge, first, ["production"], "back-to-v1-fails")
    assert described["status"] == "FAILED" and described["error"] == "RollbackOnDemandFailed", described
    assert "NotServingNewVersion" in edge.visited(execution)
    assert _targets(edge)[created:] == [(FLEET_GROUP, "1.0.1")]  # the rollback's deployment only: 1.0.2 not back
    assert edge.greengrass.model_on_group(FLEET_ARN) == "1.0.1"
    (report,) = edge.notifications()
    assert report["subject"] == "Edge rollback on demand stopped at stage production: model package v1"
    assert "  - line-1-cam-2: no heartbeat with model version 1.0.1" in report["message"]
    assert "Nothing else was deployed" in report["message"]


def test_a_rollback_on_demand_of_the_whole_fleet_and_of_an_unknown_stage(workflow_stack, monkeypatch, moto):
    edge = _workflow(workflow_stack, monkeypatch)
    first = edge.register()
    edge.approve(first)
    assert edge.wait(edge.start(_approval(first), "v1"))["status"] == "SUCCEEDED"
    assert _deploy(edge, "v2")[1]["status"] == "SUCCEEDED"
    assert _rollback(edge, first, [], "all-back")[1]["status"] == "SUCCEEDED"
    assert edge.greengrass.model_on_group(FLEET_ARN) == edge.greengrass.model_on_group(PILOT_ARN) == "1.0.1"
    created = len(edge.greengrass.created)
    _, described = _rollback(edge, first, ["canary"], "unknown")
    assert described["status"] == "FAILED" and described["error"] == "StageInputError"
    assert "no stage named canary (the stages are pilot, production)" in described["cause"]
    assert len(edge.greengrass.created) == created


def test_a_stage_without_soak_is_not_health_gated_but_still_needs_every_device_s_heartbeat(
    workflow_stack, monkeypatch, moto
):
    one_stage = [{"name": "fleet", "thing_groups": [FLEET_GROUP], "soak_minutes": 0, "manual_approval": False}]
    edge = _workflow(workflow_stack, monkeypatch, stages=one_stage)
    edge.cloudwatch.figures["line-1-cam-1"] = {"LatencyMs": 5000.0}  # would fail a gate: there is none
    _, described = _deploy(edge, "v1")
    assert described["status"] == "SUCCEEDED", described
    (report,) = edge.notifications()
    assert (
        "every one of its 2 devices reports it in its heartbeats; not health-gated (soak_minutes 0)"
        in (report["message"])
    )
    edge.cloudwatch.not_loading.add("line-1-cam-2")  # the heartbeat check still holds
    _, described = _deploy(edge, "v2")
    assert described["status"] == "FAILED" and described["error"] == "StageRolledBack"
    assert edge.greengrass.model_on_group(FLEET_ARN) == "1.0.1"


def test_a_stage_whose_devices_all_left_after_it_began_is_not_promoted(workflow_stack, monkeypatch, moto):
    one_stage = [{"name": "fleet", "thing_groups": [FLEET_GROUP], "soak_minutes": 0, "manual_approval": False}]
    edge = _workflow(workflow_stack, monkeypatch, stages=one_stage)
    deploy = edge.greengrass.create_deployment

    def deploy_then_empty_the_group(**request: Any) -> dict[str, Any]:
        answer = deploy(**request)
        edge.greengrass.groups[FLEET_GROUP] = ()  # every device moved out while the stage rolls out
        return answer

    monkeypatch.setattr(edge.greengrass, "create_deployment", deploy_then_empty_the_group)
    execution, described = _deploy(edge, "emptied")
    assert described["status"] == "FAILED" and described["error"] == "StageRolledBack", described
    assert "NotServingNewVersion" in edge.visited(execution)
    (report,) = edge.notifications()
    assert f"stage fleet: thing group(s) {FLEET_GROUP} have no devices left" in report["message"]


@pytest.mark.parametrize("answer", ["{}", '{"approved": "yes"}', '{"approved": false}'], ids=["empty", "text", "false"])
def test_only_an_explicit_approval_promotes(workflow_stack, monkeypatch, moto, answer):
    edge, execution, request = _pilot_awaiting_approval(workflow_stack, monkeypatch, "unclear")
    edge.sfn.send_task_success(taskToken=request["task_token"], output=answer)  # e.g. by hand, half-typed
    described = edge.wait(execution)
    assert described["status"] == "FAILED" and described["error"] == "StageRolledBack"
    assert "ApprovalNotGiven" in edge.visited(execution)
    assert _targets(edge) == [(PILOT_GROUP, "1.0.1"), (PILOT_GROUP, None)]
    report = [n for n in edge.notifications() if n["subject"].startswith("Edge rollout stopped")]
    assert (
        f"the answer to the approval request was not an approval ({answer.replace(' ', '')})" in (report[0]["message"])
    )
