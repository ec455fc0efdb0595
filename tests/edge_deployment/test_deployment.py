"""Steps 3 and 4: the CreateDeployment request, reusing a deployment, and reading the rollout's IoT job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.stub import Stubber

from edge_deployment.function_config import rollout_policy
from edge_deployment.runtime.deployment import (
    ABORTED,
    CANCELED,
    FAILED,
    GOOD_OUTCOMES,
    INCOMPLETE,
    NO_DEVICES,
    SUCCEEDED,
    RolloutPolicy,
    client_token,
    create_or_reuse_deployment,
    deployment_request,
    report,
    rollout_status,
    superseded_result,
)
from tests.edge_deployment.conftest import ACCOUNT, REGION

GROUP_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/tag-inspection-line-1"
INFERENCE, MODEL = "com.example.tag-inspection.ScratchDetector", "com.example.tag-inspection.ScratchModel"
COMPONENTS = {INFERENCE: "1.0.123456", MODEL: "1.0.7"}
POLICY = RolloutPolicy(
    base_rate_per_minute=5,
    increment_factor=2.0,
    notified_things_per_step=10,
    maximum_per_minute=100,
    abort_failure_percentage=10.0,
    abort_min_executed_things=3,
    job_timeout_minutes=60,
    component_update_timeout_seconds=60,
    max_wait_minutes=180,
)
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
JOB = "0f4a5e6c-1111-2222-3333-444455556666"
DEPLOYMENT = {
    "deployment_id": "d-123",
    "iot_job_id": JOB,
    "started_at": (NOW - timedelta(minutes=5)).isoformat(),
    "components": COMPONENTS,
    "reused": False,
}
PACKAGE = {"arn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/tag-inspect-scratch-detector/7", "version": 7}


@pytest.fixture
def greengrass():
    client = boto3.client("greengrassv2", region_name=REGION)
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


@pytest.fixture
def iot():
    client = boto3.client("iot", region_name=REGION)
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def _request() -> dict:
    return deployment_request(
        thing_group_arn=GROUP_ARN,
        deployment_name="tag-inspection-line-1",
        components=COMPONENTS,
        rollout=POLICY,
        client_token=client_token("exec-1", "a=1"),
    )


def test_the_request_deploys_exactly_both_versions_with_rollback_notify_and_staged_rollout():
    request = _request()
    assert request["targetArn"] == GROUP_ARN
    assert request["components"] == {
        INFERENCE: {"componentVersion": "1.0.123456", "configurationUpdate": {"reset": [""]}},
        MODEL: {"componentVersion": "1.0.7", "configurationUpdate": {"reset": [""]}},
    }
    policies = request["deploymentPolicies"]
    assert policies["failureHandlingPolicy"] == "ROLLBACK"
    assert policies["componentUpdatePolicy"] == {"action": "NOTIFY_COMPONENTS", "timeoutInSeconds": 60}
    job = request["iotJobConfiguration"]
    assert job["jobExecutionsRolloutConfig"] == {
        "exponentialRate": {
            "baseRatePerMinute": 5,
            "incrementFactor": 2.0,
            "rateIncreaseCriteria": {"numberOfNotifiedThings": 10},
        },
        "maximumPerMinute": 100,
    }
    assert job["abortConfig"] == {
        "criteriaList": [
            {"failureType": "ALL", "action": "CANCEL", "thresholdPercentage": 10.0, "minNumberOfExecutedThings": 3}
        ]
    }
    assert job["timeoutConfig"] == {"inProgressTimeoutInMinutes": 60}


def test_the_rollout_policy_comes_from_the_configuration(settings):
    policy = rollout_policy(settings)
    rollout = settings.edge_deployment.rollout
    assert policy.base_rate_per_minute == rollout.base_rate_per_minute
    assert policy.abort_failure_percentage == rollout.abort_failure_percentage
    assert policy.job_timeout_minutes == rollout.job_timeout_minutes
    assert RolloutPolicy.from_json(policy.to_json()) == policy


def test_a_first_deployment_is_created_with_the_request_greengrass_accepts(greengrass, iot):
    client, stub = greengrass
    request = _request()
    stub.add_response("list_deployments", {"deployments": []}, {"targetArn": GROUP_ARN, "historyFilter": "LATEST_ONLY"})
    # Stubber checks the request against the CreateDeployment API model (names, types, enums, ranges).
    stub.add_response("create_deployment", {"deploymentId": "d-new", "iotJobId": JOB}, request)
    result = create_or_reuse_deployment(client, iot[0], request, now=NOW)
    assert result == {
        "deployment_id": "d-new",
        "iot_job_id": JOB,
        "reused": False,
        "superseded": False,
        "started_at": NOW.isoformat(),
        "components": COMPONENTS,
    }


def _current(versions: dict[str, str]) -> dict:
    return {
        "deploymentId": "d-old",
        "iotJobId": "job-old",
        "targetArn": GROUP_ARN,
        "deploymentStatus": "ACTIVE",
        "components": {name: {"componentVersion": version} for name, version in versions.items()},
    }


def _job(status: str, *, processing: list[str] | None = None, **counts: int) -> dict:
    details = {f"numberOf{name[0].upper()}{name[1:]}Things": value for name, value in counts.items()}
    if processing:
        details["processingTargets"] = processing
    return {"job": {"jobId": JOB, "status": status, "jobProcessDetails": details}}


def test_a_rerun_with_the_same_versions_reuses_the_current_deployment(greengrass, iot):
    client, stub = greengrass
    iot_client, iot_stub = iot
    stub.add_response(
        "list_deployments",
        {"deployments": [{"deploymentId": "d-old", "deploymentStatus": "ACTIVE", "isLatestForTarget": True}]},
    )
    stub.add_response("get_deployment", _current(COMPONENTS), {"deploymentId": "d-old"})
    iot_stub.add_response("describe_job", _job("IN_PROGRESS", succeeded=4), {"jobId": "job-old"})
    result = create_or_reuse_deployment(client, iot_client, _request(), now=NOW)
    assert result["reused"] is True
    assert result["deployment_id"] == "d-old"
    assert result["iot_job_id"] == "job-old"


def test_a_new_model_version_creates_a_new_deployment(greengrass, iot):
    client, stub = greengrass
    request = _request()
    stub.add_response(
        "list_deployments",
        {"deployments": [{"deploymentId": "d-old", "deploymentStatus": "ACTIVE", "isLatestForTarget": True}]},
    )
    stub.add_response("get_deployment", _current({INFERENCE: "1.0.123456", MODEL: "1.0.6"}), {"deploymentId": "d-old"})
    stub.add_response("create_deployment", {"deploymentId": "d-new", "iotJobId": JOB}, request)
    assert create_or_reuse_deployment(client, iot[0], request, now=NOW)["reused"] is False


def test_the_same_versions_are_rolled_out_again_when_their_last_rollout_failed(greengrass, iot):
    client, stub = greengrass
    iot_client, iot_stub = iot
    request = _request()
    stub.add_response(
        "list_deployments",
        {"deployments": [{"deploymentId": "d-old", "deploymentStatus": "ACTIVE", "isLatestForTarget": True}]},
    )
    stub.add_response("get_deployment", _current(COMPONENTS), {"deploymentId": "d-old"})
    iot_stub.add_response("describe_job", _job("IN_PROGRESS", succeeded=3, failed=1), {"jobId": "job-old"})
    stub.add_response("create_deployment", {"deploymentId": "d-new", "iotJobId": JOB}, request)
    assert create_or_reuse_deployment(client, iot_client, request, now=NOW)["deployment_id"] == "d-new"


# -- following the rollout ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "waited", "expected"),
    [
        (_job("IN_PROGRESS", processing=[GROUP_ARN]), 5, None),
        (_job("IN_PROGRESS", succeeded=3, inProgress=2), 5, None),
        (_job("IN_PROGRESS", succeeded=3, queued=1), 5, None),
        (_job("SCHEDULED"), 5, None),
        (_job("IN_PROGRESS", succeeded=5), 5, SUCCEEDED),
        (_job("COMPLETED", succeeded=5), 5, SUCCEEDED),
        (_job("IN_PROGRESS"), 5, NO_DEVICES),
        (_job("IN_PROGRESS", succeeded=20, failed=1), 5, FAILED),
        (_job("IN_PROGRESS", succeeded=20, timedOut=1), 5, FAILED),
        (_job("CANCELED", succeeded=2, failed=2, canceled=10), 5, ABORTED),
        (_job("CANCELED", succeeded=20, failed=1, canceled=3), 5, CANCELED),
        (_job("CANCELED", failed=1), 5, CANCELED),  # below abort_min_executed_things
        (_job("IN_PROGRESS", succeeded=3, queued=1), 181, INCOMPLETE),
    ],
    ids=[
        "rolling-out",
        "in-progress",
        "queued",
        "scheduled",
        "all-succeeded",
        "completed",
        "empty-group",
        "failed",
        "timed-out",
        "aborted",
        "superseded",
        "cancelled-early",
        "wait-ran-out",
    ],
)
def test_each_job_state_has_one_outcome(greengrass, iot, job, waited, expected):
    client, _stub = greengrass
    iot_client, iot_stub = iot
    deployment = DEPLOYMENT | {"started_at": (NOW - timedelta(minutes=waited)).isoformat()}
    iot_stub.add_response("describe_job", job, {"jobId": JOB})
    if expected == NO_DEVICES:
        iot_stub.add_response(
            "list_things_in_thing_group", {"things": []}, {"thingGroupName": "line-1", "maxResults": 1}
        )
    if expected in (FAILED, ABORTED, CANCELED, INCOMPLETE):
        statuses = ["FAILED", "REJECTED", "TIMED_OUT"] + (["QUEUED", "IN_PROGRESS"] if expected == INCOMPLETE else [])
        for status in statuses:
            iot_stub.add_response(
                "list_job_executions_for_job",
                {"executionSummaries": []},
                {"jobId": JOB, "status": status, "maxResults": 25},
            )
    status = rollout_status(client, iot_client, deployment=deployment, policy=POLICY, now=NOW, thing_group="line-1")
    assert status["outcome"] == expected
    assert status["finished"] is (expected is not None)


def test_a_group_with_members_the_rollout_has_not_reached_yet_is_not_empty(greengrass, iot):
    client, _ = greengrass
    iot_client, iot_stub = iot
    iot_stub.add_response("describe_job", _job("IN_PROGRESS"), {"jobId": JOB})
    iot_stub.add_response(
        "list_things_in_thing_group", {"things": ["line-1-cam-1"]}, {"thingGroupName": "line-1", "maxResults": 1}
    )
    status = rollout_status(client, iot_client, deployment=DEPLOYMENT, policy=POLICY, now=NOW, thing_group="line-1")
    assert status["finished"] is False


def test_a_failed_rollout_reports_each_failed_device_with_greengrass_s_reason(greengrass, iot):
    client, stub = greengrass
    iot_client, iot_stub = iot
    iot_stub.add_response("describe_job", _job("IN_PROGRESS", succeeded=8, failed=1, timedOut=1), {"jobId": JOB})
    iot_stub.add_response(
        "list_job_executions_for_job",
        {
            "executionSummaries": [
                {
                    "thingArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/line-1-cam-3",
                    "jobExecutionSummary": {"status": "FAILED"},
                }
            ]
        },
        {"jobId": JOB, "status": "FAILED", "maxResults": 25},
    )
    iot_stub.add_response(
        "list_job_executions_for_job",
        {"executionSummaries": []},
        {"jobId": JOB, "status": "REJECTED", "maxResults": 25},
    )
    iot_stub.add_response(
        "list_job_executions_for_job",
        {
            "executionSummaries": [
                {
                    "thingArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/line-1-cam-9",
                    "jobExecutionSummary": {"status": "TIMED_OUT"},
                }
            ]
        },
        {"jobId": JOB, "status": "TIMED_OUT", "maxResults": 25},
    )
    effective = {
        "deploymentId": "d-123",
        "deploymentName": "tag-inspection-line-1",
        "targetArn": GROUP_ARN,
        "iotJobId": JOB,
        "coreDeviceExecutionStatus": "FAILED",
        "creationTimestamp": NOW,
        "modifiedTimestamp": NOW,
        "reason": "FAILED_ROLLBACK_COMPLETE: component com.example.tag-inspection.ScratchDetector broke",
        "statusDetails": {
            "errorStack": ["DEPLOYMENT_FAILURE", "COMPONENT_UPDATE_ERROR", "COMPONENT_BROKEN"],
            "errorTypes": ["COMPONENT_ERROR"],
        },
    }
    older = effective | {"deploymentId": "d-100", "iotJobId": "job-100", "reason": "something old"}
    stub.add_response(
        "list_effective_deployments",
        {"effectiveDeployments": [older, effective]},
        {"coreDeviceThingName": "line-1-cam-3", "maxResults": 50},
    )
    stub.add_response(
        "list_effective_deployments",
        {"effectiveDeployments": []},
        {"coreDeviceThingName": "line-1-cam-9", "maxResults": 50},
    )
    status = rollout_status(client, iot_client, deployment=DEPLOYMENT, policy=POLICY, now=NOW)
    assert status["outcome"] == FAILED
    assert status["devices"] == [
        {
            "thing": "line-1-cam-3",
            "status": "FAILED",
            "reason": "FAILED; FAILED_ROLLBACK_COMPLETE: component com.example.tag-inspection.ScratchDetector broke; "
            "error types: COMPONENT_ERROR; error stack: DEPLOYMENT_FAILURE > COMPONENT_UPDATE_ERROR > COMPONENT_BROKEN",
        },
        {
            "thing": "line-1-cam-9",
            "status": "TIMED_OUT",
            "reason": "the device reported no details for this deployment",
        },
    ]
    message = report(
        status,
        deployment=DEPLOYMENT,
        package=PACKAGE,
        thing_group="tag-inspection-line-1",
        deployment_name="tag-inspection-line-1",
    )
    assert message["subject"] == "Edge rollout FAILED: model package v7 to tag-inspection-line-1"
    assert "rolled back to their previous components" in message["message"]
    assert "line-1-cam-3: FAILED - FAILED; FAILED_ROLLBACK_COMPLETE" in message["message"]
    assert "8 succeeded, 1 failed, 0 rejected, 1 timed out" in message["message"]
    assert f"{MODEL} 1.0.7" in message["message"]


def test_an_aborted_rollout_says_so(greengrass, iot):
    client, _stub = greengrass
    iot_client, iot_stub = iot
    iot_stub.add_response("describe_job", _job("CANCELED", succeeded=1, failed=2, canceled=30), {"jobId": JOB})
    for execution_status in ("FAILED", "REJECTED", "TIMED_OUT"):
        iot_stub.add_response(
            "list_job_executions_for_job",
            {"executionSummaries": []},
            {"jobId": JOB, "status": execution_status, "maxResults": 25},
        )
    status = rollout_status(client, iot_client, deployment=DEPLOYMENT, policy=POLICY, now=NOW)
    message = report(status, deployment=DEPLOYMENT, package=PACKAGE, thing_group="g", deployment_name="d")
    assert message["subject"].startswith("Edge rollout ABORTED")
    assert "aborted by the abort rule" in message["message"]


def test_the_job_id_is_looked_up_when_greengrass_had_not_created_it_yet(greengrass, iot):
    client, stub = greengrass
    iot_client, iot_stub = iot
    deployment = DEPLOYMENT | {"iot_job_id": None}
    stub.add_response("get_deployment", {"deploymentId": "d-123"}, {"deploymentId": "d-123"})
    waiting = rollout_status(client, iot_client, deployment=deployment, policy=POLICY, now=NOW)
    assert waiting["finished"] is False and waiting["job_id"] is None
    stub.add_response("get_deployment", {"deploymentId": "d-123", "iotJobId": JOB}, {"deploymentId": "d-123"})
    iot_stub.add_response("describe_job", _job("IN_PROGRESS", succeeded=2), {"jobId": JOB})
    assert rollout_status(client, iot_client, deployment=deployment, policy=POLICY, now=NOW)["outcome"] == SUCCEEDED


def test_a_long_list_of_failed_devices_is_cut_with_a_count(greengrass, iot):
    client, stub = greengrass
    iot_client, iot_stub = iot
    iot_stub.add_response("describe_job", _job("IN_PROGRESS", failed=40), {"jobId": JOB})
    things = [
        {"thingArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/cam-{i}", "jobExecutionSummary": {"status": "FAILED"}}
        for i in range(2)
    ]
    iot_stub.add_response(
        "list_job_executions_for_job",
        {"executionSummaries": things},
        {"jobId": JOB, "status": "FAILED", "maxResults": 2},
    )
    for _i in range(2):
        stub.add_client_error("list_effective_deployments", "ResourceNotFoundException", http_status_code=404)
    status = rollout_status(client, iot_client, deployment=DEPLOYMENT, policy=POLICY, now=NOW, max_reported_devices=2)
    assert [d["thing"] for d in status["devices"]] == ["cam-0", "cam-1"]
    assert status["devices"][0]["reason"] == "no Greengrass record for this device (ResourceNotFoundException)"
    message = report(status, deployment=DEPLOYMENT, package=PACKAGE, thing_group="g", deployment_name="d")["message"]
    assert "... and 38 more" in message


# -- overlapping runs: a cancelled job whose deployment another run replaced -------------------------------


def _deployment(deployment_id: str, model_version: str, job: str) -> dict:
    return {
        "deploymentId": deployment_id,
        "targetArn": GROUP_ARN,
        "components": {
            INFERENCE: {"componentVersion": "1.0.123456"},
            MODEL: {"componentVersion": model_version},
        },
        "iotJobId": job,
        "deploymentStatus": "ACTIVE",
    }


def _replaced(greengrass, iot, *, by: str | None, still_newest: bool, job_status: str = "CANCELED") -> dict:
    """Our deployment d-123 (package 7) and its job; the group's latest deployment carries model `by`."""
    client, stub = greengrass
    iot[1].add_response("describe_job", {"job": {"jobId": JOB, "status": job_status, "jobProcessDetails": {}}})
    stub.add_response("get_deployment", _deployment("d-123", "1.0.7", JOB), {"deploymentId": "d-123"})
    latest = "d-123" if by is None else "d-456"
    stub.add_response(
        "list_deployments",
        {"deployments": [{"deploymentId": latest, "targetArn": GROUP_ARN, "isLatestForTarget": True}]},
        {"targetArn": GROUP_ARN, "historyFilter": "LATEST_ONLY"},
    )
    if by is not None:
        successor = _deployment("d-456", by, "job-2")
        if by == "none":  # a person's deployment of something else
            del successor["components"][MODEL]
        stub.add_response("get_deployment", successor, {"deploymentId": "d-456"})
    if by in (None, "none", "1.0.6") and not (by == "1.0.6" and still_newest):  # reported as a cancellation
        for _ in ("FAILED", "REJECTED", "TIMED_OUT"):  # the devices that did not succeed are listed
            iot[1].add_response("list_job_executions_for_job", {"executionSummaries": []})
    asked = []

    def newest() -> bool:
        asked.append(True)
        return still_newest

    status = rollout_status(
        client, iot[0], deployment=DEPLOYMENT, policy=POLICY, now=NOW, model_component=MODEL, still_newest=newest
    )
    return {**status, "asked": len(asked)}


def test_replaced_by_a_newer_package_s_deployment_is_superseded_and_reported_as_a_success(greengrass, iot):
    status = _replaced(greengrass, iot, by="1.0.8", still_newest=False)
    assert (status["finished"], status["outcome"]) == (True, "SUPERSEDED")
    assert status["successor"] == {"deployment_id": "d-456", "model_version": 8}
    assert "SUPERSEDED" in GOOD_OUTCOMES
    message = report(status, deployment=DEPLOYMENT, package=PACKAGE, thing_group="line-1", deployment_name="line-1")[
        "message"
    ]
    assert "Replaced by Greengrass deployment d-456 (model package version 8)" in message


def test_replaced_by_another_run_of_the_same_package_is_superseded_too(greengrass, iot):
    status = _replaced(greengrass, iot, by="1.0.7", still_newest=True)
    assert status["outcome"] == "SUPERSEDED" and status["asked"] == 0


def test_replaced_by_an_older_package_while_still_the_newest_approved_deploys_again(greengrass, iot):
    status = _replaced(greengrass, iot, by="1.0.6", still_newest=True)
    assert (status["outcome"], status["successor"]) == ("REDEPLOY", {"deployment_id": "d-456", "model_version": 6})


def test_replaced_by_an_older_package_after_a_rollback_is_left_alone(greengrass, iot):
    # package 7 was rejected and the pipeline deployed 6 on purpose: this run must not put 7 back
    status = _replaced(greengrass, iot, by="1.0.6", still_newest=False)
    assert status["outcome"] == CANCELED and status["asked"] == 1


def test_replaced_by_a_person_s_deployment_stays_a_cancellation(greengrass, iot):
    assert _replaced(greengrass, iot, by="none", still_newest=True)["outcome"] == CANCELED


def test_a_cancelled_job_whose_deployment_is_still_the_latest_is_a_cancellation(greengrass, iot):
    assert _replaced(greengrass, iot, by=None, still_newest=True)["outcome"] == CANCELED


def test_a_superseded_run_explains_how_to_go_back():
    result = superseded_result(PACKAGE, {"arn": "arn:...:model-package/g/8", "version": 8}, thing_group="line-1")
    assert result["superseded"] is True and len(result["subject"]) <= 100
    assert "version 8" in result["message"] and "reject the newer package" in result["message"]


def _succeeded(iot) -> None:
    iot[1].add_response(
        "describe_job",
        {"job": {"jobId": JOB, "status": "IN_PROGRESS", "jobProcessDetails": {"numberOfSucceededThings": 2}}},
    )


def test_a_rollout_done_after_a_newer_approval_does_not_claim_the_devices(greengrass, iot):
    _succeeded(iot)
    status = rollout_status(
        greengrass[0], iot[0], deployment=DEPLOYMENT, policy=POLICY, now=NOW, still_newest=lambda: False
    )
    assert (status["finished"], status["outcome"]) == (True, "SUPERSEDED")


def test_a_successful_rollout_waits_for_the_runs_started_before_it(greengrass, iot):
    _succeeded(iot)
    waiting = rollout_status(
        greengrass[0], iot[0], deployment=DEPLOYMENT, policy=POLICY, now=NOW, older_runs=lambda: ["arn:run-0"]
    )
    assert (waiting["finished"], waiting["waiting_for"]) == (False, ["arn:run-0"])
    _succeeded(iot)
    done = rollout_status(greengrass[0], iot[0], deployment=DEPLOYMENT, policy=POLICY, now=NOW, older_runs=list)
    assert (done["finished"], done["outcome"]) == (True, "SUCCEEDED")


def test_older_runs_are_the_running_executions_started_before_this_one():
    from edge_deployment.runtime.deployment import older_running_executions

    machine = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:tag-inspect-edge-deployment"
    me = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:tag-inspect-edge-deployment:run-2"
    sfn = boto3.client("stepfunctions", region_name=REGION)
    runs = [
        ("run-1", NOW - timedelta(minutes=3)),
        ("run-2", NOW),
        ("run-3", NOW + timedelta(minutes=1)),
    ]
    executions = [
        {
            "executionArn": f"arn:aws:states:{REGION}:{ACCOUNT}:execution:tag-inspect-edge-deployment:{name}",
            "stateMachineArn": machine,
            "name": name,
            "status": "RUNNING",
            "startDate": started,
        }
        for name, started in runs
    ]
    with Stubber(sfn) as stub:
        stub.add_response(
            "list_executions", {"executions": executions}, {"stateMachineArn": machine, "statusFilter": "RUNNING"}
        )
        assert older_running_executions(sfn, execution_arn=me, started=NOW) == [executions[0]["executionArn"]]
