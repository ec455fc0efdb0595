"""CloudFormation custom resource: a retention for log groups that an AWS service creates by itself.

SageMaker writes every processing, training and labeling job's logs to `/aws/sagemaker/<kind>Jobs`,
a log group it creates on first use and that never expires. This resource creates the group when it
is missing and sets its retention on Create and Update; on Delete it leaves the group and its
retention alone (other jobs of the account write there too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from shared.runtime import cfn_response

RETRIES = Config(retries={"mode": "standard", "max_attempts": 8})


def apply_retention(logs: Any, log_group_names: Iterable[str], days: int) -> list[str]:
    """Create each log group if it is missing and set its retention; returns the names it handled."""
    handled = []
    for name in log_group_names:
        try:
            logs.create_log_group(logGroupName=name)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ResourceAlreadyExistsException":
                raise
        logs.put_retention_policy(logGroupName=name, retentionInDays=days)
        handled.append(name)
    return handled


def handler(
    event: Mapping[str, Any], context: Any, *, logs: Any = None, opener: Callable[..., Any] | None = None
) -> None:
    properties = event.get("ResourceProperties", {})
    names = list(properties.get("LogGroupNames", []))
    physical_id = "retention:" + ",".join(names)
    try:
        if event["RequestType"] in ("Create", "Update"):
            client = logs or boto3.client("logs", config=RETRIES)
            apply_retention(client, names, int(properties["RetentionInDays"]))
            reason = f"{', '.join(names)}: {properties['RetentionInDays']} days"
        else:
            reason = "log groups and their retention are left as they are"
        cfn_response.send(event, "SUCCESS", reason=reason, physical_id=physical_id, opener=opener)
    except Exception as error:  # CloudFormation must hear back, or it waits an hour
        cfn_response.send(
            event, "FAILED", reason=f"{type(error).__name__}: {error}", physical_id=physical_id, opener=opener
        )
