"""Retraining on drift: a drift alarm starts the labeling workflow pipeline, at most once per period.

The labeling workflow pipeline is the start of the loop (a labeling round of the frames the devices
sent back, then training, then deployment), so starting it is all a degraded model needs. A flapping
alarm must not start a storm of runs: when any run of that pipeline (scheduled, pushed, or started
by an earlier alarm) started within `min_interval`, nothing is started and the notification says so.
Two deliveries of the same alarm change start one run at most (the request token is the change's).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

ENVIRONMENT_VARIABLE = "RETRAINING_CONFIG"


class RetrainingConfigurationError(RuntimeError):
    """The function's settings are missing or malformed (a deployment defect)."""


class NotAnAlarmChange(ValueError):
    """The event is not a CloudWatch alarm state change into ALARM (a wiring defect: nothing is started)."""


@dataclass(frozen=True)
class RetrainingConfig:
    pipeline: str  # the labeling workflow pipeline (CodePipeline)
    topic_arn: str  # the edge app's notification topic
    min_interval_hours: int

    def to_json(self) -> str:
        return json.dumps(
            {"pipeline": self.pipeline, "topic_arn": self.topic_arn, "min_interval_hours": self.min_interval_hours},
            sort_keys=True,
        )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> RetrainingConfig:
        text = environ.get(ENVIRONMENT_VARIABLE)
        if not text:
            raise RetrainingConfigurationError(f"environment variable {ENVIRONMENT_VARIABLE} is not set")
        return cls.from_json(text)

    @classmethod
    def from_json(cls, text: str) -> RetrainingConfig:
        try:
            raw = json.loads(text)
            return cls(
                pipeline=str(raw["pipeline"]),
                topic_arn=str(raw["topic_arn"]),
                min_interval_hours=int(raw["min_interval_hours"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise RetrainingConfigurationError(
                f"{ENVIRONMENT_VARIABLE} is not a valid configuration: {error}"
            ) from None


@dataclass(frozen=True)
class AlarmChange:
    alarm: str
    reason: str
    changed_at: str

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> AlarmChange:
        """The alarm of an EventBridge "CloudWatch Alarm State Change" event into ALARM."""
        try:
            detail = event["detail"]
            state = detail["state"]
            change = cls(
                alarm=str(detail["alarmName"]), reason=str(state.get("reason", "")), changed_at=str(state["timestamp"])
            )
            value = state["value"]
        except (KeyError, TypeError) as error:
            raise NotAnAlarmChange(f"not a CloudWatch alarm state change event (missing {error})") from None
        if event.get("detail-type") != "CloudWatch Alarm State Change" or value != "ALARM":
            raise NotAnAlarmChange(f"{event.get('detail-type')!r} to state {value!r} is not an alarm going off")
        return change

    @property
    def request_token(self) -> str:
        """Idempotency token of the pipeline start: the same alarm change starts one run at most."""
        return hashlib.sha256(f"{self.alarm}|{self.changed_at}".encode()).hexdigest()[:40]


def latest_start(codepipeline: Any, pipeline: str) -> datetime | None:
    """When the newest execution of the pipeline started (None: it never ran)."""
    executions = codepipeline.list_pipeline_executions(pipelineName=pipeline, maxResults=1).get(
        "pipelineExecutionSummaries", []
    )
    if not executions:
        return None
    started: datetime = executions[0]["startTime"]
    return started if started.tzinfo else started.replace(tzinfo=UTC)


def retrain_on_drift(
    codepipeline: Any, sns: Any, *, config: RetrainingConfig, change: AlarmChange, now: datetime
) -> dict[str, Any]:
    """Start the labeling workflow pipeline unless a run started within the interval; notify either way."""
    previous = latest_start(codepipeline, config.pipeline)
    window = timedelta(hours=config.min_interval_hours)
    if previous is not None and now - previous < window:
        outcome = {
            "started": False,
            "alarm": change.alarm,
            "reason": f"{config.pipeline} started at {previous.isoformat()}, within the last "
            f"{config.min_interval_hours} h: no second run (edge_deployment.monitoring.retrain_min_hours)",
        }
        subject = "Drift alarm: retraining not started (a run is recent)"
    else:
        execution = codepipeline.start_pipeline_execution(name=config.pipeline, clientRequestToken=change.request_token)
        outcome = {
            "started": True,
            "alarm": change.alarm,
            "execution_id": execution["pipelineExecutionId"],
            "reason": f"started {config.pipeline} (labeling round, then training and deployment)",
        }
        subject = "Drift alarm: retraining started"
    message = f"Alarm {change.alarm} went off at {change.changed_at}: {change.reason}\n\n{outcome['reason']}" + (
        f"\nExecution: {outcome['execution_id']}" if outcome["started"] else ""
    )
    sns.publish(TopicArn=config.topic_arn, Subject=subject[:100], Message=message)
    return outcome
