"""The custom resource that gives SageMaker's own job log groups a retention (moto CloudWatch Logs)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from shared.runtime.service_log_groups import handler
from tests.helpers.custom_resource import CfnAnswers

GROUPS = ["/aws/sagemaker/ProcessingJobs", "/aws/sagemaker/TrainingJobs"]


def _event(request_type: str, days: int = 90) -> dict[str, Any]:
    return {
        "RequestType": request_type,
        "ResponseURL": "https://cloudformation-custom-resource-response.example/answer",
        "StackId": "arn:aws:cloudformation:eu-west-1:123456789012:stack/tag-inspect-training-workflow/1",
        "RequestId": "r-1",
        "LogicalResourceId": "JobLogRetention",
        "ResourceProperties": {"LogGroupNames": GROUPS, "RetentionInDays": str(days)},
    }


@pytest.fixture
def logs():
    with mock_aws():
        yield boto3.client("logs", region_name="eu-west-1")


def _retention(logs) -> dict[str, int | None]:
    groups = logs.describe_log_groups(logGroupNamePrefix="/aws/sagemaker/")["logGroups"]
    return {group["logGroupName"]: group.get("retentionInDays") for group in groups}


def test_missing_groups_are_created_and_existing_ones_get_the_retention(logs):
    logs.create_log_group(logGroupName=GROUPS[1])  # SageMaker made it at the account's first training job
    answers = CfnAnswers()
    handler(_event("Create"), None, logs=logs, opener=answers)
    assert _retention(logs) == dict.fromkeys(GROUPS, 90)
    (body,) = answers.bodies
    assert body["Status"] == "SUCCESS" and body["PhysicalResourceId"] == "retention:" + ",".join(GROUPS)


def test_an_update_changes_the_retention_and_a_delete_leaves_everything_as_it_is(logs):
    answers = CfnAnswers()
    handler(_event("Create", 90), None, logs=logs, opener=answers)
    handler(_event("Update", 30), None, logs=logs, opener=answers)
    assert _retention(logs) == dict.fromkeys(GROUPS, 30)
    handler(_event("Delete", 30), None, logs=logs, opener=answers)
    assert _retention(logs) == dict.fromkeys(GROUPS, 30)  # other jobs of the account still log there
    assert [body["Status"] for body in answers.bodies] == ["SUCCESS", "SUCCESS", "SUCCESS"]


def test_a_failure_is_answered_so_cloudformation_does_not_wait_an_hour():
    logs = boto3.client("logs", region_name="eu-west-1")
    with Stubber(logs) as stub:
        stub.add_client_error(
            "create_log_group", "ResourceAlreadyExistsException", expected_params={"logGroupName": GROUPS[0]}
        )
        stub.add_client_error(
            "put_retention_policy",
            "AccessDeniedException",
            "not authorized to perform: logs:PutRetentionPolicy",
            expected_params={"logGroupName": GROUPS[0], "retentionInDays": 90},
        )
        answers = CfnAnswers()
        handler(_event("Create"), None, logs=logs, opener=answers)
        stub.assert_no_pending_responses()
    (body,) = answers.bodies
    assert body["Status"] == "FAILED"
    assert body["Reason"].startswith("AccessDeniedException: An error occurred (AccessDeniedException)"), body["Reason"]
