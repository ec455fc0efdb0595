"""The Label Studio round's state machine: its definition, then executed path by path in moto's executor.

The functions run for real against a real Label Studio server (tests/labeling/conftest.py) that reads the
images from the moto S3 the state machine's functions write to; labelers and reviewers answer through
Label Studio's API while the execution waits in its Wait states.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from labeling.runtime import label_studio as ls
from labeling.runtime.errors import NON_RETRYABLE_ERRORS
from labeling.runtime.ground_truth import load_task_ui
from labeling.runtime.label_studio_api import LabelStudioClient
from shared.contracts import Annotation
from tests.helpers import asl
from tests.labeling.conftest import FEATURE_GROUP, REGION, image_bytes, make_config
from tests.labeling.fakes import FakeFeatureStore
from tests.labeling.stage import stage
from tests.labeling.workflow_harness import Workflow

pytestmark = pytest.mark.slow
SECRET = "tag-inspect/labeling/label-studio-api-token"
LAMBDA_TASKS = (
    "StartRound", "FindUnlabeled", "SelectImages", "PreLabel", "PrepareLabelingTasks", "CheckLabeling",
    "PrepareReviewTasks", "CheckReview", "WriteLabels",
)  # fmt: skip


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return stage().stack("workflow").template  # config.yaml: Label Studio


@pytest.fixture(scope="module")
def states(template) -> dict[str, dict[str, Any]]:
    (machine,) = asl.state_machines(template).values()
    return dict(asl.iter_states(machine.definition))


def test_people_are_waited_for_in_wait_states_between_short_checks(states):
    for people, check in (("Labelers", "CheckLabeling"), ("Reviewers", "CheckReview")):
        wait = states[f"WaitFor{people}"]
        assert wait == {"Type": "Wait", "Seconds": 300, "Next": check, "Comment": wait["Comment"]}  # no function idles
    assert states["LabelingDone?"]["Choices"][0] == {
        "Variable": "$.labeling_progress.done", "BooleanEquals": True, "Next": "PrepareReviewTasks",
    }  # fmt: skip
    assert states["LabelingDone?"]["Default"] == "WaitForLabelers"
    assert states["ReviewDone?"]["Choices"][0]["Next"] == "InitWriting"
    assert states["CheckLabeling"]["Parameters"] == {
        "run.$": "$.run", "project.$": "$.labeling.project", "deadline.$": "$.labeling.deadline",
    }  # fmt: skip


def test_every_task_retries_transient_errors_and_stops_on_bad_input(states):
    tasks = {name for name, state in states.items() if state["Type"] == "Task"}
    assert tasks == {*LAMBDA_TASKS, "NotifyFailure"}  # no Ground Truth job, no aws-sdk call
    for name in LAMBDA_TASKS:
        retriers = states[name]["Retry"]
        assert retriers[-2] == {"ErrorEquals": list(NON_RETRYABLE_ERRORS), "MaxAttempts": 0}, name
        assert retriers[-1]["ErrorEquals"] == ["States.ALL"] and retriers[-1]["BackoffRate"] >= 2, name
        assert states[name]["Catch"] == [
            {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "NotifyFailure"}
        ]
    for error in ("LabelStudioAuthError", "LabelStudioProjectError", "LabelStudioNotFound", "NoLabelsError"):
        assert error in NON_RETRYABLE_ERRORS
    assert "LabelStudioUnavailable" not in NON_RETRYABLE_ERRORS  # a server that is down may come back


# --------------------------------------------------------------------------------------------------
# Executions
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}):
        yield


def _setup(template: Any, monkeypatch: Any, studio: Any, prefix: str, *, token: str | None = None) -> Workflow:
    bucket = f"tag-inspect-data-{prefix}"
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    secrets = boto3.client("secretsmanager", region_name=REGION)
    secrets.create_secret(Name=SECRET, SecretString=json.dumps({"token": token or studio.token}))
    featurestore = FakeFeatureStore(FEATURE_GROUP)
    workflow = Workflow(template=template, s3=s3, featurestore=featurestore, ground_truth=None)  # type: ignore[arg-type]
    config = make_config(
        project_prefix=prefix,
        data_bucket=bucket,
        backend="label_studio",
        label_studio_url=studio.url,
        label_studio_token_secret=SECRET,
        workforce=None,
        review_workforce=None,
        ground_truth_role_arn="",
    )
    workflow.install(monkeypatch, config.to_json(), secretsmanager=secrets)
    for index in range(3):
        s3.put_object(Bucket=bucket, Key=f"raw-images/line-1/{index}.jpg", Body=image_bytes(index))
    return workflow


def test_a_label_studio_round_waits_for_people_and_writes_their_reviewed_labels(aws, template, monkeypatch, studio):
    workflow = _setup(template, monkeypatch, studio, "sfn-round")
    client = LabelStudioClient(studio.url, studio.token)
    ui = load_task_ui(["scratch"])
    box = ls.to_regions([Annotation(0, 10, 12, 40, 20)], width=320, height=240, class_names=("scratch",))
    checks = {"boxes": 0, "review": 0}

    def people(handler: str, event: dict[str, Any]) -> None:
        if handler != "label_studio_progress":
            return
        tasks = list(client.tasks(int(event["project"]), filters=[ls.data_filter("round", event["run"]["id"])]))
        phase = "review" if "boxes_task" in tasks[0].data else "boxes"
        checks[phase] += 1
        if checks[phase] == 2:  # the first look finds nothing done; people answer before the second
            for task in tasks:
                verdict = [
                    {"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": [ui.approve]}}
                ]
                client.create_annotation(task.id, result=box + (verdict if phase == "review" else []))

    workflow.before_call = people
    execution = workflow.start("weekly")
    result = workflow.wait(execution, timeout=300)
    assert result["status"] == "SUCCEEDED", result
    visited = workflow.visited(execution)
    assert visited[:9] == [
        "StartRound", "InitListing", "FindUnlabeled", "ListingDone?", "SelectImages", "AnyImageToLabel?",
        "InitPreLabels", "PreLabel", "AllPreLabeled?",
    ]  # fmt: skip
    assert visited.count("WaitForLabelers") == 2 and visited.count("WaitForReviewers") == 2
    assert visited[-4:] == ["WriteLabels", "AllLabelsWritten?", "Summarize", "RoundComplete"]
    output = json.loads(result["output"])
    assert output["labels"]["written"] == 3 and output["labels"]["approved"] == 3
    assert output["labeling_tasks"].startswith(f"{studio.url}/projects/")
    assert {values["review_status"] for values in workflow.featurestore.records.values()} == {"approved"}
    assert {values["labeling_job"] for values in workflow.featurestore.records.values()} == {
        f"sfn-round-boxes/{output['round']}"
    }
    assert workflow.notifications() == []


def test_a_round_whose_time_runs_out_with_no_answer_fails_and_keeps_the_tasks(aws, template, monkeypatch, studio):
    workflow = _setup(template, monkeypatch, studio, "sfn-idle")

    def time_is_up(handler: str, event: dict[str, Any]) -> None:
        if handler == "label_studio_progress":
            event["deadline"] = "2000-01-01T00:00:00.000Z"

    workflow.before_call = time_is_up
    result = workflow.wait(workflow.start("idle"), timeout=300)
    assert (result["status"], result["error"]) == ("FAILED", "NoLabelsError")
    assert "3 unanswered" in result["cause"] and "stay open for the next round" in result["cause"]
    (message,) = workflow.notifications()
    assert "Error: NoLabelsError" in message
    assert workflow.featurestore.puts == []


def test_a_wrong_token_stops_the_round_at_once_naming_the_server(aws, template, monkeypatch, studio):
    workflow = _setup(template, monkeypatch, studio, "sfn-token", token="f" * 40)
    result = workflow.wait(workflow.start("wrong-token"), timeout=300)
    assert (result["status"], result["error"]) == ("FAILED", "LabelStudioAuthError")
    assert f"Label Studio at {studio.url}" in result["cause"] and "HTTP 401" in result["cause"]
    assert len(workflow.handler_calls("prepare_label_studio_tasks")) == 1  # not retried
