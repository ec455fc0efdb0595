"""The one CloudFormation responder every custom resource function answers with."""

from __future__ import annotations

import json

import pytest

from shared.runtime.cfn_response import REASON_LIMIT, response_body, send
from tests.helpers.custom_resource import RESPONSE_URL, CfnAnswers, cfn_event

EVENT = cfn_event("Create", "Thing", {"Name": "x"})


def test_the_answer_carries_the_request_s_identity_and_the_result():
    answers = CfnAnswers(url=RESPONSE_URL)
    send(EVENT, "SUCCESS", physical_id="thing-1", reason="made", data={"Version": "1.0.1"}, opener=answers)
    assert answers.bodies == [
        {
            "Status": "SUCCESS",
            "Reason": "made",
            "PhysicalResourceId": "thing-1",
            "StackId": EVENT["StackId"],
            "RequestId": EVENT["RequestId"],
            "LogicalResourceId": "Thing",
            "Data": {"Version": "1.0.1"},
        }
    ]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("", "FAILED"),  # CloudFormation shows the reason: never an empty one
        ("x" * (REASON_LIMIT + 500), "x" * REASON_LIMIT),
        ("short", "short"),
    ],
)
def test_the_reason_is_never_empty_and_never_too_long(reason, expected):
    body = json.loads(response_body(EVENT, "FAILED", physical_id="p", reason=reason))
    assert body["Reason"] == expected


def test_a_long_error_still_fits_cloudformation_s_4_kib():
    body = response_body(EVENT, "FAILED", physical_id="p" * 200, reason="é" * 10_000, data={"K": "v" * 100})
    assert len(body) < 4096


def test_only_success_or_failure_is_an_answer():
    with pytest.raises(ValueError, match="SUCCESS or FAILED"):
        response_body(EVENT, "DONE", physical_id="p")
