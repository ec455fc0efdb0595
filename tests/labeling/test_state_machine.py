"""The labeling state machine: its definition checked state by state, then executed path by path in moto."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from labeling.runtime.errors import NON_RETRYABLE_ERRORS
from labeling.runtime.ground_truth import REQUEST_KEYS
from tests.helpers import asl
from tests.labeling.conftest import BUCKET, FEATURE_GROUP, make_config
from tests.labeling.fakes import FakeFeatureStore
from tests.labeling.stage import GROUND_TRUTH, stage
from tests.labeling.test_feature_store import record
from tests.labeling.workflow_harness import LABELING_JOB_SYNC, Workflow

TASKS_WITH_LAMBDA = (
    "StartRound",
    "FindUnlabeled",
    "SelectImages",
    "PreLabel",
    "PrepareLabelingJob",
    "PrepareReviewJob",
    "WriteLabels",
)
LABELING_JOBS = ("LabelBoxes", "ReviewBoxes")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    """The state machine of a Ground Truth account (test_label_studio_workflow.py has the other backend)."""
    return stage(**GROUND_TRUTH).stack("workflow").template


@pytest.fixture(scope="module")
def machine(template) -> asl.StateMachine:
    (found,) = asl.state_machines(template).values()
    return found


@pytest.fixture(scope="module")
def states(machine) -> dict[str, dict[str, Any]]:
    return dict(asl.iter_states(machine.definition))


# --------------------------------------------------------------------------------------------------
# The definition
# --------------------------------------------------------------------------------------------------


def test_every_task_retries_with_backoff_and_every_failure_is_notified(states):
    tasks = {name: state for name, state in states.items() if state["Type"] == "Task"}
    assert set(tasks) == {*TASKS_WITH_LAMBDA, *LABELING_JOBS, "NotifyFailure"}
    for name, state in tasks.items():
        retriers = state["Retry"]
        assert retriers, name
        for retrier in retriers:
            if retrier.get("MaxAttempts") == 0:
                assert retrier["ErrorEquals"] == list(NON_RETRYABLE_ERRORS), name
            else:
                assert retrier["IntervalSeconds"] >= 2 and retrier["BackoffRate"] >= 2, (name, retrier)
        (catch,) = state["Catch"]
        assert catch["ErrorEquals"] == ["States.ALL"]
        assert catch["Next"] == ("RoundFailed" if name == "NotifyFailure" else "NotifyFailure")
        if name in TASKS_WITH_LAMBDA:
            assert retriers[-1]["ErrorEquals"] == ["States.ALL"] and retriers[-1]["JitterStrategy"] == "FULL"
            assert retriers[-2] == {"ErrorEquals": list(NON_RETRYABLE_ERRORS), "MaxAttempts": 0}
    assert states["NotifyFailure"]["Next"] == "RoundFailed"
    assert states["RoundFailed"] == {
        "Type": "Fail",
        "Comment": "The execution fails with the error and cause at $.error",
        "ErrorPath": "$.error.Error",
        "CausePath": "$.error.Cause",
    }


def test_failure_notification_names_the_execution_and_the_reason(states):
    notify = states["NotifyFailure"]
    assert notify["Resource"] == "arn:aws:states:::sns:publish"
    assert notify["Parameters"]["TopicArn"] == "arn:aws:sns:eu-west-1:123456789012:tag-inspect-labeling-notifications"
    assert notify["Parameters"]["Message.$"] == (
        "States.Format('Labeling round {} failed. Error: {}. Cause: {}', $$.Execution.Id, $.error.Error, $.error.Cause)"
    )


def test_ground_truth_jobs_run_with_the_sync_integration_and_the_prepared_requests(states):
    for name, request in (("LabelBoxes", "$.labeling.request"), ("ReviewBoxes", "$.review.request")):
        state = states[name]
        assert state["Resource"] == LABELING_JOB_SYNC  # Step Functions waits; no Lambda idles
        assert state["Parameters"] == {f"{key}.$": f"{request}.{key}" for key in REQUEST_KEYS}
        assert state["TimeoutSeconds"] == 259_200 + 86_400
        assert state["Retry"] == [
            {
                "ErrorEquals": ["SageMaker.AmazonSageMakerException"],
                "IntervalSeconds": 2,
                "MaxAttempts": 5,
                "BackoffRate": 2,
                "MaxDelaySeconds": 60,
                "JitterStrategy": "FULL",
            }
        ]
        assert state["ResultSelector"]["output.$"] == "$.LabelingJobOutput.OutputDatasetS3Uri"


def service_tasks(states: dict[str, dict[str, Any]]) -> list[asl.SdkTask]:
    """Every task that calls an AWS API, as an SdkTask: aws-sdk tasks, and the optimized integrations
    (sagemaker:createLabelingJob.sync, sns:publish) whose parameters are the API's own."""
    tasks = []
    for name, state in states.items():
        resource = state.get("Resource", "")
        if state["Type"] != "Task" or not resource.startswith("arn:aws:states:::"):
            continue
        service, action = resource.removeprefix("arn:aws:states:::").removeprefix("aws-sdk:").split(":", 1)
        tasks.append(asl.SdkTask(name, service, action.split(".")[0], state["Parameters"], resource))
    return tasks


def test_every_service_task_names_a_real_operation_with_valid_parameters(states):
    tasks = service_tasks(states)
    assert {(t.service, t.operation_name) for t in tasks} == {("sagemaker", "CreateLabelingJob"), ("sns", "Publish")}
    assert asl.sdk_tasks({"States": states}) == []  # no aws-sdk task: everything else runs in the functions
    for task in tasks:
        assert asl.check_sdk_task(task) == [], task.state_name


def test_the_state_machine_role_may_do_what_its_tasks_do(template, machine, states):
    role = machine.role_logical_id
    for task in service_tasks(states):
        for action in asl.iam_actions(task):
            assert asl.role_allows(template, role, action), action
    # what the .sync integration does besides creating the job
    for action in (
        "sagemaker:DescribeLabelingJob",
        "sagemaker:StopLabelingJob",
        "iam:PassRole",
        "events:PutRule",
        "events:PutTargets",
        "events:DescribeRule",
    ):
        assert asl.role_allows(template, role, action), action
    # the notification topic is encrypted: publishing needs its key (found by alias)
    assert asl.role_allows(template, role, "kms:GenerateDataKey")
    for name in TASKS_WITH_LAMBDA:
        function = states[name]["Resource"]
        assert function.startswith("${") and function.endswith(".Arn}")
    assert asl.role_allows(template, role, "lambda:InvokeFunction")


def test_the_sync_integration_may_manage_only_step_functions_sagemaker_rules(template, machine):
    """Step Functions creates its own EventBridge rule for .sync labeling jobs; nothing else is granted."""
    import fnmatch

    statements = [
        statement
        for statement in asl.role_statements(template, machine.role_logical_id)
        if "events:PutRule" in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    ]
    assert len(statements) == 1
    (resource,) = (
        statements[0]["Resource"] if isinstance(statements[0]["Resource"], list) else [statements[0]["Resource"]]
    )
    rule_pattern = json.dumps(resource).split(":rule/")[1].split('"')[0]
    assert rule_pattern == "StepFunctionsGetEventsForSageMaker*"
    assert fnmatch.fnmatchcase("StepFunctionsGetEventsForSageMakerLabelingJobsRule", rule_pattern)
    assert not fnmatch.fnmatchcase("tag-inspect-labeling-schedule", rule_pattern)


def test_the_payload_carries_cursors_and_requests_never_image_lists(states):
    assert states["FindUnlabeled"]["Parameters"] == {"run.$": "$.run", "cursor.$": "$.find"}
    assert states["PreLabel"]["Parameters"] == {"run.$": "$.run", "cursor.$": "$.pre_labels"}
    assert states["AllPreLabeled?"]["Default"] == "PreLabel"
    assert states["FindUnlabeled"]["ResultPath"] == "$.find"
    assert states["ListingDone?"]["Default"] == "FindUnlabeled"
    assert states["AllLabelsWritten?"]["Default"] == "WriteLabels"
    assert states["WriteLabels"]["Parameters"]["cursor.$"] == "$.write"


# --------------------------------------------------------------------------------------------------
# Executions (moto's Step Functions executor, the real handlers)
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def moto_sfn() -> Iterator[None]:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}):
        yield


@pytest.fixture
def workflow(moto_sfn, template, monkeypatch, ground_truth, featurestore: FakeFeatureStore) -> Workflow:
    run = Workflow(template=template, s3=ground_truth.s3, featurestore=featurestore, ground_truth=ground_truth)
    run.install(monkeypatch, make_config(ground_truth_role_arn="arn:aws:iam::123456789012:role/gt").to_json())
    return run


def uri(key: str) -> str:
    return f"s3://{BUCKET}/{key}"


def put_images(s3: Any, jpeg: bytes, png: bytes) -> None:
    for key, body in {
        "raw-images/line-1/a.jpg": jpeg,
        "raw-images/line-1/b.png": png,
        "raw-images/edge/dev-1/2026-11-22/c.jpg": jpeg,
        "raw-images/line-1/notes.txt": b"not an image",
        "raw-images/line-1/empty.jpg": b"",
        "raw-images/line-1/broken.jpg": b"GIF89a pretending to be a jpeg",
    }.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def test_nothing_to_label_succeeds_quietly(workflow, s3, featurestore, jpeg):
    s3.put_object(Bucket=BUCKET, Key="raw-images/a.jpg", Body=jpeg)
    featurestore.records[uri("raw-images/a.jpg")] = {
        i["FeatureName"]: i["ValueAsString"] for i in record(uri("raw-images/a.jpg")).to_feature_store()
    }
    execution = workflow.start("quiet")
    result = workflow.wait(execution)
    assert result["status"] == "SUCCEEDED"
    assert workflow.visited(execution)[-1] == "NothingToLabel"
    assert workflow.ground_truth.requests == [] and workflow.notifications() == []
    assert json.loads(result["output"])["find"]["approved"] == 1


def test_a_round_labels_reviews_and_writes_the_verified_labels(workflow, s3, featurestore, jpeg, png):
    put_images(s3, jpeg, png)
    workflow.ground_truth.verdicts = lambda image: "reject" if image.endswith("c.jpg") else "approve"
    execution = workflow.start("weekly-2026-11-22")
    result = workflow.wait(execution)
    assert result["status"] == "SUCCEEDED", result
    output = json.loads(result["output"])
    assert workflow.visited(execution) == [
        "StartRound", "InitListing", "FindUnlabeled", "ListingDone?", "SelectImages", "AnyImageToLabel?",
        "InitPreLabels", "PreLabel", "AllPreLabeled?",  # no approved model yet: workers draw every box
        "PrepareLabelingJob", "LabelBoxes", "PrepareReviewJob", "ReviewBoxes", "InitWriting", "WriteLabels",
        "AllLabelsWritten?", "Summarize", "RoundComplete",
    ]  # fmt: skip
    boxes_request, review_request = workflow.ground_truth.requests
    manifest = s3.get_object(
        Bucket=BUCKET,
        Key=boxes_request["InputConfig"]["DataSource"]["S3DataSource"]["ManifestS3Uri"].split(f"{BUCKET}/")[1],
    )
    sent = {json.loads(line)["source-ref"] for line in manifest["Body"].read().decode().splitlines()}
    # non-image, zero-byte and undecodable files never reach the workers
    assert sent == {
        uri("raw-images/line-1/a.jpg"),
        uri("raw-images/line-1/b.png"),
        uri("raw-images/edge/dev-1/2026-11-22/c.jpg"),
    }
    assert (
        boxes_request["LabelingJobName"] == output["labeling_job"]
        and review_request["LabelingJobName"] == output["review_job"]
    )
    assert review_request["HumanTaskConfig"]["PreHumanTaskLambdaArn"].endswith("PRE-VerificationBoundingBox")
    assert {u: featurestore.status_of(u) for u in sent} == {
        uri("raw-images/line-1/a.jpg"): "approved",
        uri("raw-images/line-1/b.png"): "approved",
        uri("raw-images/edge/dev-1/2026-11-22/c.jpg"): "rejected",
    }
    assert output["labels"] == {
        "next": 3, "total": 3, "written": 3, "unchanged": 0, "superseded": 0,
        "approved": 2, "rejected": 1, "no_verdict": 0, "done": True,
    }  # fmt: skip
    assert (output["pre_labels"]["done"], output["pre_labels"]["model"]) == (True, "")  # no approved model yet
    assert output["listing"]["skipped"] == 2  # notes.txt and empty.jpg, reported under the round's reports/
    reports = [
        o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=output["reports"].split(f"{BUCKET}/")[1])["Contents"]
    ]
    assert sorted(k.rsplit("/", 1)[1] for k in reports) == ["skipped-listing-00000.jsonl", "undecodable.jsonl"]
    assert len(json.dumps(output)) < 4000  # what travels in the state is small
    assert workflow.notifications() == []


def test_a_verification_that_rejects_everything_writes_rejected_records(workflow, s3, featurestore, jpeg, png):
    put_images(s3, jpeg, png)
    workflow.ground_truth.verdicts = lambda image: "reject"
    result = workflow.run("all-rejected")
    assert result["status"] == "SUCCEEDED"
    assert {record["review_status"] for record in featurestore.puts} == {"rejected"} and len(featurestore.puts) == 3
    # the next round sends the same images again
    second = workflow.wait(workflow.start("next-round"))
    assert second["status"] == "SUCCEEDED" and len(workflow.ground_truth.requests) == 4


def _assert_failed_and_notified(workflow: Workflow, result: dict[str, Any], error: str, cause: str) -> None:
    assert result["status"] == "FAILED"
    assert result["error"] == error  # the execution names what went wrong
    assert cause in result["cause"]
    (message,) = workflow.notifications()
    assert message.startswith(f"Labeling round {result['executionArn']} failed. Error: {error}. Cause: ")
    assert cause in message


def test_a_malformed_labeling_output_fails_the_round_notifies_and_writes_nothing(workflow, s3, featurestore, jpeg, png):
    put_images(s3, jpeg, png)

    def corrupt_output(handler: str, event: dict[str, Any]) -> None:
        if handler == "prepare_review":
            bucket, key = event["boxes_output"][5:].split("/", 1)
            s3.put_object(Bucket=bucket, Key=key, Body=b'{"source-ref": "s3://x/a.jpg", "defect-boxes": "???"}\n')

    workflow.before_call = corrupt_output
    result = workflow.run("malformed")
    _assert_failed_and_notified(workflow, result, "ManifestError", "line 1: defect-boxes must be an object")
    assert featurestore.puts == [] and len(workflow.ground_truth.requests) == 1  # no review job was started
    assert len(workflow.handler_calls("prepare_review")) == 1  # bad input is not retried


def test_an_empty_review_output_fails_the_round_and_writes_nothing(workflow, s3, featurestore, jpeg, png):
    put_images(s3, jpeg, png)

    def empty_output(handler: str, event: dict[str, Any]) -> None:
        if handler == "write_labels":
            bucket, key = event["review_output"][5:].split("/", 1)
            s3.put_object(Bucket=bucket, Key=key, Body=b"")

    workflow.before_call = empty_output
    result = workflow.run("empty-review")
    _assert_failed_and_notified(workflow, result, "ManifestError", "the output manifest is empty")
    assert featurestore.puts == []


def test_a_failed_labeling_job_fails_the_round_with_a_notification(workflow, s3, jpeg, png):
    put_images(s3, jpeg, png)

    def job_fails(handler: str, event: dict[str, Any]) -> None:
        if handler == "FakeGroundTruth":
            raise RuntimeError(f"labeling job {event['LabelingJobName']} failed: the work team does not exist")

    workflow.before_call = job_fails
    result = workflow.run("job-fails")
    _assert_failed_and_notified(workflow, result, "RuntimeError", "the work team does not exist")


def test_long_listings_and_writes_loop_through_cursors(workflow, s3, featurestore, jpeg, monkeypatch):
    from labeling.runtime import rounds

    for index in range(7):
        s3.put_object(Bucket=BUCKET, Key=f"raw-images/{index}.jpg", Body=jpeg)
    monkeypatch.setattr(rounds, "PAGE_SIZE", 3)
    monkeypatch.setattr(rounds, "WRITE_BATCH_DEFAULT", 2)
    workflow.seconds_per_call = lambda handler: 30.0  # each call has less than a minute left: one batch per call
    result = workflow.run("looping")
    assert result["status"] == "SUCCEEDED"
    assert len(workflow.handler_calls("find_unlabeled")) == 3 and len(workflow.handler_calls("write_labels")) == 4
    assert len(featurestore.records) == 7 and len(featurestore.puts) == 7


def test_a_transient_error_is_retried_and_the_round_completes(workflow, s3, featurestore, jpeg):
    s3.put_object(Bucket=BUCKET, Key="raw-images/a.jpg", Body=jpeg)
    failures = iter([True])

    def throttled_once(handler: str, event: dict[str, Any]) -> None:
        if handler == "write_labels" and next(failures, False):
            raise ConnectionError("Feature Store endpoint reset the connection")

    workflow.before_call = throttled_once
    result = workflow.wait(workflow.start("retry"), timeout=180)
    assert result["status"] == "SUCCEEDED"
    assert len(workflow.handler_calls("write_labels")) == 2 and len(featurestore.puts) == 1


def test_a_second_round_does_not_run_beside_the_first(workflow, s3, jpeg):
    s3.put_object(Bucket=BUCKET, Key="raw-images/a.jpg", Body=jpeg)
    first_started, release = threading.Event(), threading.Event()

    def hold_the_first_round(handler: str, event: dict[str, Any]) -> None:
        if handler == "find_unlabeled" and event["run"]["id"] == first_run_id():
            first_started.set()
            assert release.wait(60)

    runs: list[str] = []

    def first_run_id() -> str:
        return runs[0] if runs else ""

    original = workflow.before_call

    def before(handler: str, event: dict[str, Any]) -> None:
        if handler == "find_unlabeled" and not runs:
            runs.append(event["run"]["id"])
        hold_the_first_round(handler, event)
        original(handler, event)

    workflow.before_call = before
    first = workflow.start("first")
    assert first_started.wait(60)
    second = workflow.wait(workflow.start("second"))
    release.set()
    _assert_failed_and_notified(workflow, second, "ConcurrentRoundError", ":first")
    assert workflow.wait(first)["status"] == "SUCCEEDED"
    assert make_config().feature_group == FEATURE_GROUP
