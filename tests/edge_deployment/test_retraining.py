"""Retraining on drift: the alarm event starts the labeling workflow pipeline, at most once per period.

CodePipeline and SNS are stubbed with botocore's Stubber (requests checked against the service models
and, strictly, against their length and pattern rules: tests/conftest.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from edge_deployment.runtime.retraining import (
    ENVIRONMENT_VARIABLE,
    AlarmChange,
    NotAnAlarmChange,
    RetrainingConfig,
    RetrainingConfigurationError,
    retrain_on_drift,
)

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
CONFIG = RetrainingConfig(
    pipeline="tag-inspect-labeling-workflow-pipeline",
    topic_arn="arn:aws:sns:eu-west-1:123456789012:tag-inspect-edge-deployment-notifications",
    min_interval_hours=24,
)
ALARM = "tag-inspect-edge-deployment-uncertainty-drift"


def alarm_event(state: str = "ALARM", *, timestamp: str = "2026-12-04T11:59:00.000+0000") -> dict[str, Any]:
    """An EventBridge "CloudWatch Alarm State Change" event, as CloudWatch sends it."""
    return {
        "version": "0",
        "id": "c4c1c1c9-6542-e61b-6ef0-8c4d36933a92",
        "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch",
        "account": "123456789012",
        "time": "2026-12-04T11:59:00Z",
        "region": "eu-west-1",
        "resources": [f"arn:aws:cloudwatch:eu-west-1:123456789012:alarm:{ALARM}"],
        "detail": {
            "alarmName": ALARM,
            "state": {"value": state, "reason": "Threshold Crossed: 1 datapoint [0.31] > 0.15", "timestamp": timestamp},
            "previousState": {"value": "OK"},
        },
    }


def clients() -> tuple[Any, Any]:
    return boto3.client("codepipeline", region_name="eu-west-1"), boto3.client("sns", region_name="eu-west-1")


def _executions(*started: datetime) -> dict[str, Any]:
    return {
        "pipelineExecutionSummaries": [
            {"pipelineExecutionId": f"e-{index}", "status": "Succeeded", "startTime": moment}
            for index, moment in enumerate(started)
        ]
    }


@pytest.mark.parametrize(
    ("previous", "starts"),
    [
        (None, True),  # never ran
        (NOW - timedelta(hours=25), True),
        (NOW - timedelta(hours=24), True),  # exactly the interval ago: a new period
        (NOW - timedelta(hours=23, minutes=59), False),
        (NOW - timedelta(minutes=5), False),  # e.g. the schedule, or an earlier alarm, just started it
    ],
)
def test_a_drift_alarm_starts_the_labeling_pipeline_unless_a_run_is_recent(
    previous: datetime | None, starts: bool
) -> None:
    codepipeline, sns = clients()
    change = AlarmChange.from_event(alarm_event())
    with Stubber(codepipeline) as pipeline_stub, Stubber(sns) as sns_stub:
        pipeline_stub.add_response(
            "list_pipeline_executions",
            _executions(previous) if previous else {"pipelineExecutionSummaries": []},
            {"pipelineName": CONFIG.pipeline, "maxResults": 1},
        )
        if starts:
            pipeline_stub.add_response(
                "start_pipeline_execution",
                {"pipelineExecutionId": "new-run"},
                {"name": CONFIG.pipeline, "clientRequestToken": change.request_token},
            )
        sns_stub.add_response(
            "publish", {"MessageId": "m"}, {"TopicArn": CONFIG.topic_arn, "Subject": ANY, "Message": ANY}
        )
        outcome = retrain_on_drift(codepipeline, sns, config=CONFIG, change=change, now=NOW)
        pipeline_stub.assert_no_pending_responses()
        sns_stub.assert_no_pending_responses()
    assert outcome["started"] is starts and outcome["alarm"] == ALARM
    if starts:
        assert outcome["execution_id"] == "new-run"
    else:
        assert "retrain_min_hours" in outcome["reason"]


def test_the_notification_names_the_alarm_its_reason_and_what_was_done() -> None:
    codepipeline, sns = clients()
    sent: list[dict[str, Any]] = []
    sns.meta.events.register("provide-client-params.sns.Publish", lambda params, **_: sent.append(params))
    with Stubber(codepipeline) as pipeline_stub, Stubber(sns) as sns_stub:
        pipeline_stub.add_response("list_pipeline_executions", _executions(NOW - timedelta(hours=2)))
        sns_stub.add_response("publish", {"MessageId": "m"})
        retrain_on_drift(codepipeline, sns, config=CONFIG, change=AlarmChange.from_event(alarm_event()), now=NOW)
    (message,) = sent
    assert message["Subject"] == "Drift alarm: retraining not started (a run is recent)"
    assert ALARM in message["Message"] and "[0.31] > 0.15" in message["Message"]
    assert CONFIG.pipeline in message["Message"]


def test_the_same_alarm_change_delivered_twice_asks_for_the_same_run() -> None:
    first, again = AlarmChange.from_event(alarm_event()), AlarmChange.from_event(alarm_event())
    later = AlarmChange.from_event(alarm_event(timestamp="2026-12-05T11:59:00.000+0000"))
    assert first.request_token == again.request_token != later.request_token
    assert len(first.request_token) <= 128  # CodePipeline's clientRequestToken limit


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (alarm_event("OK"), "is not an alarm going off"),
        (alarm_event("INSUFFICIENT_DATA"), "is not an alarm going off"),
        ({**alarm_event(), "detail-type": "Something Else"}, "is not an alarm going off"),
        ({"detail": {}}, "not a CloudWatch alarm state change event"),
        ({}, "not a CloudWatch alarm state change event"),
    ],
)
def test_anything_but_an_alarm_going_off_starts_nothing(event: dict[str, Any], message: str) -> None:
    with pytest.raises(NotAnAlarmChange, match=message):
        AlarmChange.from_event(event)


def test_the_settings_travel_as_one_json_document_and_their_absence_is_named() -> None:
    assert RetrainingConfig.from_environment({ENVIRONMENT_VARIABLE: CONFIG.to_json()}) == CONFIG
    with pytest.raises(RetrainingConfigurationError, match="RETRAINING_CONFIG is not set"):
        RetrainingConfig.from_environment({})
    with pytest.raises(RetrainingConfigurationError, match="not a valid configuration"):
        RetrainingConfig.from_environment({ENVIRONMENT_VARIABLE: '{"pipeline": "p"}'})
