"""The answer a CloudFormation custom resource owes: one PUT of its result to the pre-signed ResponseURL.

Every custom resource function of the apps answers through `send`, success or failure: CloudFormation
that hears nothing waits an hour before it gives up on the stack.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

# CloudFormation accepts a response of at most 4 KiB; the reason (an error message, most often) is cut to
# REASON_LIMIT characters, and further when its escaped form would still not fit beside the other fields.
RESPONSE_LIMIT = 4096
REASON_LIMIT = 1500


def response_body(
    event: Mapping[str, Any],
    status: str,
    *,
    physical_id: str,
    reason: str = "",
    data: Mapping[str, Any] | None = None,
) -> bytes:
    """The JSON document CloudFormation expects; an empty reason becomes the status."""
    if status not in ("SUCCESS", "FAILED"):
        raise ValueError(f"a custom resource answers SUCCESS or FAILED, not {status!r}")
    answer = {
        "Status": status,
        "Reason": (reason or status)[:REASON_LIMIT],
        "PhysicalResourceId": physical_id,
        "StackId": event["StackId"],
        "RequestId": event["RequestId"],
        "LogicalResourceId": event["LogicalResourceId"],
        "Data": dict(data or {}),
    }
    body = json.dumps(answer).encode()
    while len(body) > RESPONSE_LIMIT and answer["Reason"]:
        # an escaped character takes at most 6 bytes (\uXXXX): cut at least what overflows
        overflow = -(-(len(body) - RESPONSE_LIMIT) // 6)
        answer["Reason"] = answer["Reason"][:-overflow]
        body = json.dumps(answer).encode()
    return body


def send(
    event: Mapping[str, Any],
    status: str,
    *,
    physical_id: str,
    reason: str = "",
    data: Mapping[str, Any] | None = None,
    opener: Callable[..., Any] | None = None,
) -> None:
    """PUT the answer to the event's ResponseURL (`opener` is `urllib.request.urlopen` unless a test passes one)."""
    body = response_body(event, status, physical_id=physical_id, reason=reason, data=data)
    request = urllib.request.Request(  # noqa: S310 - CloudFormation's https pre-signed URL
        event["ResponseURL"], data=body, method="PUT", headers={"Content-Type": "", "Content-Length": str(len(body))}
    )
    with (opener or urllib.request.urlopen)(request, timeout=30) as response:
        response.read()
