"""The approval CLI: the answers it sends Step Functions, and the answers it refuses (requests checked by Stubber)."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import ANY, Stubber

from edge_deployment import promotion
from edge_deployment.workflow import REJECTED

TOKEN = "AQCEAAAAKgAAAAMAAAAAAAAAAd" + "x" * 40


@pytest.fixture
def sfn():
    return boto3.client("stepfunctions", region_name="eu-west-1")


def test_approve_sends_the_token_and_who_approved(sfn):
    with Stubber(sfn) as stub:
        output = json.dumps({"approved": True, "by": "lead", "note": "ok"})
        stub.add_response("send_task_success", {}, {"taskToken": TOKEN, "output": output})
        promotion.approve(sfn, token=f" {TOKEN}\n", by="lead", note="ok")
        stub.assert_no_pending_responses()


def test_reject_sends_the_error_the_workflow_catches_with_the_reason(sfn):
    assert promotion.REJECTED == REJECTED  # the CLI and the state machine name the rejection alike
    with Stubber(sfn) as stub:
        stub.add_response(
            "send_task_failure",
            {},
            {"taskToken": TOKEN, "error": "Rejected", "cause": "rejected by lead: flags clean tags"},
        )
        promotion.reject(sfn, token=TOKEN, by="lead", reason="flags clean tags")
        stub.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda sfn: promotion.reject(sfn, token=TOKEN, by="lead", reason="  "), "--reason must say why"),
        (lambda sfn: promotion.approve(sfn, token="", by="lead"), "--token must be the task_token"),
        (lambda sfn: promotion.approve(sfn, token="x" * 1025, by="lead"), "--token must be the task_token"),
    ],
    ids=["no-reason", "no-token", "token-too-long"],
)
def test_an_answer_without_what_it_needs_is_refused_before_any_call(sfn, call, message):
    with Stubber(sfn), pytest.raises(promotion.PromotionError, match=message):
        call(sfn)  # an unexpected call would fail: the stubber has no response queued


@pytest.mark.parametrize("code", ["TaskTimedOut", "TaskDoesNotExist", "InvalidToken"])
def test_an_answer_that_comes_too_late_says_the_stage_was_rolled_back(sfn, code):
    with Stubber(sfn) as stub:
        stub.add_client_error("send_task_success", service_error_code=code)
        with pytest.raises(promotion.PromotionError, match="rolled back"):
            promotion.approve(sfn, token=TOKEN, by="lead")


def test_the_rollback_command_starts_the_workflow_with_the_package_and_stages(sfn, settings):
    request = promotion.rollback_request(
        settings, version=6, stages=["production"], account="123456789012", region="eu-west-1"
    )
    assert request == {
        "trigger": "rollback",
        "model_package_arn": "arn:aws:sagemaker:eu-west-1:123456789012:model-package/tag-inspect-scratch-detector/6",
        "model_package_group_name": "tag-inspect-scratch-detector",
        "stages": ["production"],
    }
    with Stubber(sfn) as stub:
        stub.add_response(
            "start_execution",
            {"executionArn": "arn:aws:states:eu-west-1:123456789012:execution:x:y", "startDate": "2026-12-04"},
            {
                "stateMachineArn": "arn:aws:states:eu-west-1:123456789012:stateMachine:tag-inspect-edge-deployment",
                "name": ANY,
                "input": json.dumps(request),
            },
        )
        promotion.start_rollback(sfn, settings, request, account="123456789012", region="eu-west-1")
        stub.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("version", "stages", "message"),
    [(6, ["canary"], "--stage canary: no such stage"), (0, [], "--version must be a model package version")],
)
def test_a_rollback_to_nothing_known_is_refused(settings, version, stages, message):
    with pytest.raises(promotion.PromotionError, match=message):
        promotion.rollback_request(settings, version=version, stages=stages, account="123456789012", region="eu-west-1")
