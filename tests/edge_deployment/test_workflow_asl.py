"""The synthesized state machine, path by path, in moto's Step Functions interpreter.

Lambda tasks and the Greengrass task get scripted answers (Greengrass is not in moto; the functions
are tested on their own with Stubber and moto); the SNS tasks publish to a moto topic, so the
messages people receive are checked too.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.sns.models import sns_backends
from moto.stepfunctions.parser.backend import execution as execution_module
from moto.stepfunctions.parser.mocking.mock_config import (
    MockedResponseReturn,
    MockedResponseThrow,
    MockTestCase,
    StateMockedResponses,
)

from tests.edge_deployment.conftest import ACCOUNT, GROUP, REGION
from tests.helpers.asl import iter_states, state_machines

INFERENCE_VERSION = "1.0.4242"
TOPIC = "tag-inspect-edge-deployment-notifications"
PACKAGE = {
    "arn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{GROUP}/7",
    "group_name": GROUP,
    "version": 7,
    "model_data_url": "s3://tag-inspect-models/7/model.tar.gz",
    "approval_status": "Approved",
    "creation_time": "2026-11-20T10:00:00+00:00",
}
MODEL_COMPONENT = {
    "name": "com.example.tag-inspection.ScratchModel",
    "version": "1.0.7",
    "arn": f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:com.example.tag-inspection.ScratchModel:versions:1.0.7",
    "created": True,
    "reused": False,
}
DEPLOYMENT = {
    "deployment_id": "d-1",
    "iot_job_id": "job-1",
    "reused": False,
    "superseded": False,
    "started_at": "2026-11-22T12:00:00+00:00",
}
APPROVAL_EVENT_INPUT = {
    "trigger": "model-package-approved",
    "model_package_arn": PACKAGE["arn"],
    "model_package_group_name": GROUP,
    "event_id": "e-1",
}


class Throw:
    """A task failing with `error` (a function's errorType) and its message."""

    def __init__(self, error: str, message: str) -> None:
        self.error, self.message = error, message


class _InOrder(list):
    """Scripted answers of one state, one per visit (loops and retries alike), the last one repeating."""

    def __init__(self, items: Sequence[Any]) -> None:
        super().__init__(items)
        self.served = 0

    def __getitem__(self, _index):  # type: ignore[override]
        item = list.__getitem__(self, min(self.served, list.__len__(self) - 1))
        self.served += 1
        return item

    def __len__(self) -> int:
        return 1_000_000


def _mocked(state: str, answers: Sequence[Any], *, lambda_task: bool) -> StateMockedResponses:
    responses = []
    for answer in answers:
        if isinstance(answer, Throw):
            cause = json.dumps({"errorMessage": answer.message, "errorType": answer.error, "stackTrace": []})
            responses.append(MockedResponseThrow(0, 0, error=answer.error, cause=cause))
        else:
            payload = {"StatusCode": 200, "Payload": answer} if lambda_task else answer
            responses.append(MockedResponseReturn(0, 0, payload=payload))
    mocked = StateMockedResponses(state, f"{state}-answers", [MockedResponseReturn(0, 0, payload={})])
    mocked.mocked_responses[:] = []
    object.__setattr__(mocked, "mocked_responses", _InOrder(responses))
    return mocked


@pytest.fixture(scope="module")
def definition(workflow_stack) -> dict[str, Any]:
    template = workflow_stack.template
    substitutions = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Lambda::Function":
            substitutions[logical_id] = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{logical_id}"
        if resource["Type"] == "Custom::GreengrassComponentVersion":
            substitutions[f"{logical_id}.ComponentVersion"] = INFERENCE_VERSION
    (machine,) = state_machines(template, substitutions).values()
    return machine.definition


def _fast(definition: Mapping[str, Any]) -> dict[str, Any]:
    """The same definition with every Wait shortened to 0 s (only the timing differs)."""
    fast = copy.deepcopy(definition)
    for _, state in iter_states(fast):
        if state["Type"] == "Wait":
            state.pop("SecondsPath", None)
            state["Seconds"] = 0
    return fast


LAMBDA_STATES = {
    "ResolveModelPackage",
    "PrepareModelComponent",
    "BeginStage",
    "CreateDeployment",
    "CheckRollout",
    "CheckServing",
    "CheckHealth",
    "RollBackStage",
    "CheckRollback",
}


def _stage(index: int, name: str, *, last: bool) -> dict[str, Any]:
    """BeginStage's answer for the example's stages (pilot, production)."""
    return {
        "index": index,
        "name": name,
        "last": last,
        "next_index": index + 1,
        "thing_groups": [{"name": f"line-1-{name}", "arn": f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/line-1-{name}"}],
        "poll_seconds": 30,
        "soak_seconds": 600,
        "manual_approval": False,
        "approval_timeout_seconds": 3600,
        "started_at": "2026-11-22T12:00:00+00:00",
        "on_demand": False,
    }


STAGES = [_stage(0, "pilot", last=False), _stage(1, "production", last=True)]
SERVING = {"finished": True, "outcome": "SUCCEEDED", "devices": 2, "serving": 2, "missing": [],
           "confirmed_at": "2026-11-22T12:10:00+00:00"}  # fmt: skip
HEALTHY = {
    "healthy": True,
    "gated": True,
    "verdict": "health gate passed of 2 devices over 10 minutes",
    "devices": 2,
    "window_minutes": 10.0,
    "samples": [],
}
# Both stages pass their heartbeats and health gate: a test scripts only what differs.
STAGES_PASS = {"BeginStage": STAGES, "CheckServing": [SERVING], "CheckHealth": [HEALTHY]}
STAGE_STATES = [
    "CheckRollout",
    "RolloutFinished",
    "WaitForHeartbeats",
    "CheckServing",
    "ServingNewVersion",
    "Soak",
    "CheckHealth",
    "StageHealthy",
    "LastStage",
]


def run(definition, execution_input: Mapping[str, Any], answers: Mapping[str, Sequence[Any]], monkeypatch):
    """Run the state machine; returns (describe_execution, visited states, SNS messages, task inputs)."""
    case = MockTestCase("edge", "path", [])
    answers = {**STAGES_PASS, **answers}
    for state, state_answers in answers.items():
        case.state_mocked_responses[state] = _mocked(state, state_answers, lambda_task=state in LAMBDA_STATES)

    class Worker(execution_module.ExecutionWorker):
        def __init__(self, *args, **kwargs):
            kwargs["mock_test_case"] = case
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(execution_module, "ExecutionWorker", Worker)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        topic_arn = boto3.client("sns", region_name=REGION).create_topic(Name=TOPIC)["TopicArn"]
        sfn = boto3.client("stepfunctions", region_name=REGION)
        machine = sfn.create_state_machine(
            name="tag-inspect-edge-deployment",
            definition=json.dumps(_fast(definition)),
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/edge-workflow",
        )["stateMachineArn"]
        execution = sfn.start_execution(stateMachineArn=machine, input=json.dumps(execution_input))["executionArn"]
        deadline = time.monotonic() + 60
        while (described := sfn.describe_execution(executionArn=execution))["status"] == "RUNNING":
            assert time.monotonic() < deadline, "the execution did not finish"
            time.sleep(0.05)
        events = sfn.get_execution_history(executionArn=execution, maxResults=1000)["events"]
        visited = [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]
        inputs: dict[str, list[Any]] = {}
        for event in events:
            if "stateEnteredEventDetails" in event:
                details = event["stateEnteredEventDetails"]
                inputs.setdefault(details["name"], []).append(json.loads(details["input"]))
        messages = [
            {"subject": subject, "message": message}
            for _, message, subject, *_ in sns_backends[ACCOUNT][REGION].topics[topic_arn].sent_notifications
        ]
    return described, visited, messages, inputs


def _rollout(outcome: str | None, message: str = "") -> dict[str, Any]:
    if outcome is None:
        return {"finished": False, "outcome": None, "counts": {}, "devices": []}
    answer = {
        "finished": True,
        "outcome": outcome,
        "subject": f"Edge rollout {outcome}: model package v7, stage pilot",
        "message": message or f"rollout {outcome}",
        "counts": {},
        "devices": [],
    }
    if outcome not in ("SUCCEEDED", "NO_DEVICES", "SUPERSEDED"):
        answer["failure"] = {"summary": f"the stage's rollout ended {outcome}", "devices": [], "more_devices": 0}
    return answer


ROLLBACK = {"started_at": "2026-11-22T12:30:00+00:00", "deployments": [{"thing_group": "line-1-pilot",
            "deployment_id": "d-2", "iot_job_id": "job-2", "reused": False}]}  # fmt: skip


def _rolled_back(message: str) -> dict[str, Any]:
    return {
        "finished": True,
        "outcome": "SUCCEEDED",
        "subject": "Edge rollout stopped at stage pilot: model package v7 rolled back",
        "message": message,
    }


def test_first_model_creates_component_deploys_both_components_and_reports_success(definition, monkeypatch):
    described, visited, messages, inputs = run(
        definition,
        APPROVAL_EVENT_INPUT,
        {
            "ResolveModelPackage": [{"found": True, "package": PACKAGE, "message": "deploying v7"}],
            "PrepareModelComponent": [MODEL_COMPONENT],
            "DescribeModelComponent": [
                {"Status": {"ComponentState": "REQUESTED"}},
                {"Status": {"ComponentState": "DEPLOYABLE"}},
            ],
            "CreateDeployment": [DEPLOYMENT],
            "CheckRollout": [
                _rollout(None),
                _rollout(None),
                _rollout("SUCCEEDED", "every pilot device runs model 1.0.7"),
                _rollout("SUCCEEDED", "every device runs model 1.0.7"),
            ],
        },
        monkeypatch,
    )
    assert described["status"] == "SUCCEEDED", (described.get("error"), described.get("cause"), visited)
    assert visited == [
        "ResolveModelPackage",
        "ModelPackageFound",
        "PrepareModelComponent",
        "StartModelComponentPolls",
        "DescribeModelComponent",
        "ModelComponentDeployable",
        "CountModelComponentPoll",
        "WaitForModelComponent",
        "DescribeModelComponent",
        "ModelComponentDeployable",
        "StartStages",
        "BeginStage",
        "StartDeploymentAttempts",
        "CreateDeployment",
        "DeploymentSuperseded",
        "WaitForRollout",
        "CheckRollout",
        "RolloutFinished",
        "WaitForRollout",
        "CheckRollout",
        "RolloutFinished",
        "WaitForRollout",
        *STAGE_STATES,
        "NotifyStagePassed",
        "NextStage",
        "BeginStage",
        "StartDeploymentAttempts",
        "CreateDeployment",
        "DeploymentSuperseded",
        "WaitForRollout",
        *STAGE_STATES,
        "NotifySuccess",
        "Deployed",
    ]
    assert [i["next_stage"]["index"] for i in inputs["BeginStage"]] == [0, 1]  # the stages in order
    assert [i["stage"]["name"] for i in inputs["CreateDeployment"]] == ["pilot", "production"]
    # the resolver got the event's package ARN; the deployment gets the published inference version
    assert inputs["ResolveModelPackage"][0]["model_package_arn"] == PACKAGE["arn"]
    create_input = inputs["CreateDeployment"][0]
    assert create_input["model_component"] == MODEL_COMPONENT
    assert messages == [
        {
            "subject": "[tag-inspect] Edge stage pilot passed: model version 1.0.7",
            "message": "Stage pilot passed with model version 1.0.7: every one of its 2 devices reports it in its "
            "heartbeats; health gate passed of 2 devices over 10 minutes.\n\nevery pilot device runs model 1.0.7",
        },
        {
            "subject": "[tag-inspect] Edge rollout SUCCEEDED: model version 1.0.7 through stage production",
            "message": "Stage production passed with model version 1.0.7: every one of its 2 devices reports it in "
            "its heartbeats; health gate passed of 2 devices over 10 minutes.\n\nevery device runs model 1.0.7",
        },
    ]


def test_the_deployment_step_receives_exactly_the_published_inference_version(definition):
    parameters = definition["States"]["CreateDeployment"]["Parameters"]
    assert parameters["inference_component"] == {
        "name": "com.example.tag-inspection.ScratchDetector",
        "version": INFERENCE_VERSION,
    }
    assert parameters["model_component.$"] == "$.model_component"
    assert parameters["execution_id.$"] == "$$.Execution.Id"
    assert parameters["package.$"] == "$.resolution.package"
    assert parameters["attempt.$"] == "$.deployment_attempts.count"


def test_rerunning_the_same_package_reuses_component_and_deployment(definition, monkeypatch):
    described, visited, messages, _ = run(
        definition,
        APPROVAL_EVENT_INPUT,
        {
            "ResolveModelPackage": [{"found": True, "package": PACKAGE, "message": "deploying v7"}],
            "PrepareModelComponent": [MODEL_COMPONENT | {"created": False, "reused": True}],
            "DescribeModelComponent": [{"Status": {"ComponentState": "DEPLOYABLE"}}],
            "CreateDeployment": [DEPLOYMENT | {"reused": True}],
            "CheckRollout": [_rollout("SUCCEEDED", "already deployed")],
        },
        monkeypatch,
    )
    assert described["status"] == "SUCCEEDED"
    assert "WaitForModelComponent" not in visited
    assert visited.count("CreateDeployment") == 2 and visited.count("CheckRollout") == 2  # once per stage
    assert [m["message"].split("\n\n")[-1] for m in messages] == ["already deployed", "already deployed"]


@pytest.mark.parametrize("outcome", ["FAILED", "ABORTED", "CANCELED", "INCOMPLETE"])
def test_a_stage_whose_rollout_did_not_succeed_is_rolled_back_and_the_next_stage_never_starts(
    definition, monkeypatch, outcome
):
    described, visited, messages, inputs = run(
        definition,
        APPROVAL_EVENT_INPUT,
        {
            "ResolveModelPackage": [{"found": True, "package": PACKAGE, "message": "deploying v7"}],
            "PrepareModelComponent": [MODEL_COMPONENT],
            "DescribeModelComponent": [{"Status": {"ComponentState": "DEPLOYABLE"}}],
            "CreateDeployment": [DEPLOYMENT],
            "CheckRollout": [_rollout(None), _rollout(outcome)],
            "RollBackStage": [ROLLBACK],
            "CheckRollback": [{"finished": False, "outcome": None}, _rolled_back("put back on 1.0.6")],
        },
        monkeypatch,
    )
    assert described["status"] == "FAILED"
    assert described["error"] == "StageRolledBack"
    assert described["cause"] == "Edge rollout stopped at stage pilot: model package v7 rolled back"
    assert visited[-12:] == [
        "RolloutFinished",
        "RolloutFailedOnStage",
        "RollBackStage",
        "WaitForRollback",
        "CheckRollback",
        "RollbackFinished",
        "WaitForRollback",
        "CheckRollback",
        "RollbackFinished",
        "NotifyStageRolledBack",
        "RolledBackOrOnDemand",
        "StageRolledBack",
    ]
    assert visited.count("BeginStage") == 1 and "CheckServing" not in visited  # production never deployed
    assert inputs["RollBackStage"][0]["stage_failure"]["summary"] == f"the stage's rollout ended {outcome}"
    assert messages == [
        {"subject": "Edge rollout stopped at stage pilot: model package v7 rolled back", "message": "put back on 1.0.6"}
    ]


def test_a_group_with_no_devices_in_the_job_still_needs_every_device_s_heartbeat(definition, monkeypatch):
    not_serving = {
        "finished": True,
        "outcome": "NOT_SERVING",
        "failure": {"summary": "1 of 1 devices did not report model version 1.0.7", "devices": [], "more_devices": 0},
    }
    described, visited, _, inputs = run(
        definition,
        APPROVAL_EVENT_INPUT,
        {
            "ResolveModelPackage": [{"found": True, "package": PACKAGE, "message": "deploying v7"}],
            "PrepareModelComponent": [MODEL_COMPONENT],
            "DescribeModelComponent": [{"Status": {"ComponentState": "DEPLOYABLE"}}],
            "CreateDeployment": [DEPLOYMENT],
            "CheckRollout": [_rollout("NO_DEVICES")],
            "CheckServing": [{"finished": False, "outcome": None}, not_serving],
            "RollBackStage": [ROLLBACK],
            "CheckRollback": [_rolled_back("put back")],
        },
        monkeypatch,
    )
    assert described["status"] == "FAILED" and described["error"] == "StageRolledBack"
    assert visited.count("CheckServing") == 2 and "Soak" not in visited
    assert "NotServingNewVersion" in visited
    assert inputs["CheckRollback"][0]["stage_failure"] == not_serving["failure"]


def test_no_approved_model_yet_succeeds_with_a_message_and_does_nothing_else(definition, monkeypatch):
    message = f"No approved model package in group {GROUP} yet: nothing to deploy."
    described, visited, messages, inputs = run(
        definition,
        {"trigger": "workflow-pipeline"},
        {"ResolveModelPackage": [{"found": False, "package": None, "message": message}]},
        monkeypatch,
    )
    assert described["status"] == "SUCCEEDED"
    assert json.loads(described["output"]) == {"deployed": False, "message": message}
    assert visited == ["ResolveModelPackage", "ModelPackageFound", "NothingToDeploy", "NoApprovedModelYet"]
    assert messages == []
    assert inputs["ResolveModelPackage"] == [{"trigger": "workflow-pipeline"}]


@pytest.mark.parametrize(
    ("failing_state", "error", "reason"),
    [
        (
            "ResolveModelPackage",
            "WrongModelPackageGroup",
            "model package ... belongs to group 'other'; nothing was created",
        ),
        (
            "PrepareModelComponent",
            "InvalidModelArchive",
            "model archive s3://m/7 has no model.onnx at its root; nothing was created",
        ),
        (
            "PrepareModelComponent",
            "ModelArchiveTooLarge",
            "model archive s3://m/7 is 250.0 MiB, over the limit of 200 MiB",
        ),
        ("CreateDeployment", "AccessDeniedException", "not authorized to perform greengrass:CreateDeployment"),
        (
            "BeginStage",
            "StageInputError",
            "stage pilot (edge_deployment.stages[0]): thing group line-1-pilot has no devices",
        ),
    ],
    ids=["other-group", "no-onnx", "too-large", "deployment-denied", "empty-group"],
)
def test_a_failing_step_stops_the_workflow_early_and_notifies_the_reason(
    definition, monkeypatch, failing_state, error, reason
):
    answers: dict[str, list[Any]] = {
        "ResolveModelPackage": [{"found": True, "package": PACKAGE, "message": "deploying v7"}],
        "PrepareModelComponent": [MODEL_COMPONENT],
        "DescribeModelComponent": [{"Status": {"ComponentState": "DEPLOYABLE"}}],
        "CreateDeployment": [DEPLOYMENT],
        "CheckRollout": [_rollout("SUCCEEDED")],
    }
    answers[failing_state] = [Throw(error, reason)]
    described, visited, messages, _ = run(definition, APPROVAL_EVENT_INPUT, answers, monkeypatch)
    assert described["status"] == "FAILED"
    assert described["error"] == error
    assert reason in described["cause"]
    assert visited[-2:] == ["NotifyFailure", "DeploymentFailed"]
    order = ["ResolveModelPackage", "PrepareModelComponent", "BeginStage", "CreateDeployment", "CheckRollout"]
    for later in order[order.index(failing_state) + 1 :]:
        assert later not in visited  # nothing after the failing step ran: nothing was created
    assert visited.count(failing_state) == 1  # bad input is not retried
    (notification,) = messages
    assert notification["subject"] == "[tag-inspect] Edge deployment failed"
    assert error in notification["message"] and reason in notification["message"]


def test_a_component_version_greengrass_rejects_is_reported(definition, monkeypatch):
    described, visited, messages, _ = run(
        definition,
        APPROVAL_EVENT_INPUT,
        {
            "ResolveModelPackage": [{"found": True, "package": PACKAGE, "message": "deploying v7"}],
            "PrepareModelComponent": [MODEL_COMPONENT],
            "DescribeModelComponent": [{"Status": {"ComponentState": "FAILED", "Message": "artifact digest mismatch"}}],
        },
        monkeypatch,
    )
    assert described["status"] == "FAILED"
    assert described["error"] == "ModelComponentRejected"
    assert "CreateDeployment" not in visited
    assert "artifact digest mismatch" in messages[0]["message"]
    # the version stays FAILED in Greengrass: the message says how to get past it
    assert f"aws greengrassv2 delete-component --arn {MODEL_COMPONENT['arn']}" in messages[0]["message"]


def test_transient_errors_are_retried_then_the_workflow_goes_on(definition, monkeypatch):
    described, visited, _, _ = run(
        definition,
        APPROVAL_EVENT_INPUT,
        {
            "ResolveModelPackage": [
                Throw("TransientError", "ThrottlingException: Rate exceeded"),
                {"found": True, "package": PACKAGE, "message": "deploying v7"},
            ],
            "PrepareModelComponent": [MODEL_COMPONENT],
            "DescribeModelComponent": [{"Status": {"ComponentState": "DEPLOYABLE"}}],
            "CreateDeployment": [DEPLOYMENT],
            "CheckRollout": [_rollout("SUCCEEDED")],
        },
        monkeypatch,
    )
    assert described["status"] == "SUCCEEDED"
    assert visited.count("ResolveModelPackage") == 1  # a retry is not a new visit of the state


def test_a_component_version_that_never_becomes_deployable_is_reported_not_polled_forever(definition, monkeypatch):
    from edge_deployment.workflow import COMPONENT_POLL_SECONDS, MODEL_COMPONENT_MAX_POLLS

    described, visited, messages, _ = run(
        definition,
        APPROVAL_EVENT_INPUT,
        {
            "ResolveModelPackage": [{"found": True, "package": PACKAGE, "message": "deploying v7"}],
            "PrepareModelComponent": [MODEL_COMPONENT],
            "DescribeModelComponent": [{"Status": {"ComponentState": "INITIATED"}}] * (MODEL_COMPONENT_MAX_POLLS + 1),
        },
        monkeypatch,
    )
    assert described["status"] == "FAILED"
    assert described["error"] == "ModelComponentNotDeployable"
    assert visited.count("DescribeModelComponent") == MODEL_COMPONENT_MAX_POLLS + 1
    assert visited.count("WaitForModelComponent") == MODEL_COMPONENT_MAX_POLLS
    assert "CreateDeployment" not in visited
    assert visited[-3:] == ["ModelComponentNotDeployable", "NotifyFailure", "DeploymentFailed"]
    (notification,) = messages
    assert MODEL_COMPONENT_MAX_POLLS * COMPONENT_POLL_SECONDS > 60  # Greengrass takes seconds, not minutes
    assert (
        f"within {MODEL_COMPONENT_MAX_POLLS * COMPONENT_POLL_SECONDS} seconds (still INITIATED)"
        in (notification["message"])
    )
    assert MODEL_COMPONENT["arn"] in notification["message"]
