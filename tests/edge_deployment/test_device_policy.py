"""Each device's own IoT policy, checked against the Greengrass V2 developer guide's minimal core-device policy.

The guide ("Device authentication and authorization for AWS IoT Greengrass", minimal AWS IoT policy for
core devices) grants the statements in GUIDE_MINIMAL below with `core-device-thing-name*` resources,
and says thing policy variables are not supported for core devices. Every request that policy allows
for this device must be allowed by ours; nothing of another device (even one whose name starts with
this one's) may be.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from edge_deployment.device_policy import (
    MAX_POLICY_CHARACTERS,
    device_policy_document,
    device_policy_name,
    policy_json,
)

ARN = "arn:aws:iot:eu-west-1:123456789012"
DEVICE = "line-1-cam-1"
NEIGHBOUR = "line-1-cam-10"  # starts with DEVICE: the guide's `<thing>*` would let DEVICE act as it
ROLE_ALIAS = "tag-inspect-edge-token-exchange"

# The guide's minimal policy as (actions, resources), `{thing}` standing for `core-device-thing-name`.
GUIDE_MINIMAL: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("iot:Connect",), ("client/{thing}*",)),
    (
        ("iot:Receive", "iot:Publish"),
        (
            "topic/$aws/things/{thing}*/greengrass/health/json",
            "topic/$aws/things/{thing}*/greengrassv2/health/json",
            "topic/$aws/things/{thing}*/jobs/*",
            "topic/$aws/things/{thing}*/shadow/*",
        ),
    ),
    (("iot:Subscribe",), ("topicfilter/$aws/things/{thing}*/jobs/*", "topicfilter/$aws/things/{thing}*/shadow/*")),
    (("iot:GetThingShadow", "iot:UpdateThingShadow", "iot:DeleteThingShadow"), ("thing/{thing}*",)),
    (("iot:AssumeRoleWithCertificate",), ("rolealias/{alias}",)),
    (
        (
            "greengrass:GetComponentVersionArtifact",
            "greengrass:ResolveComponentCandidates",
            "greengrass:GetDeploymentConfiguration",
            "greengrass:ListThingGroupsForCoreDevice",
        ),
        ("*",),
    ),
]

# What the device really asks for under each of the guide's wildcards (the nucleus's client ids are
# <thing>, <thing>#2, ... per extra connection; its job and shadow topics).
CONCRETE = {
    "client/{thing}*": ["client/{thing}", "client/{thing}#2", "client/{thing}#3"],
    "topic/$aws/things/{thing}*/jobs/*": [
        "topic/$aws/things/{thing}/jobs/notify-next",
        "topic/$aws/things/{thing}/jobs/$next/get",
        "topic/$aws/things/{thing}/jobs/d-1/update/accepted",
    ],
    "topic/$aws/things/{thing}*/shadow/*": [
        "topic/$aws/things/{thing}/shadow/update",
        "topic/$aws/things/{thing}/shadow/name/config/get/accepted",
    ],
    "topicfilter/$aws/things/{thing}*/jobs/*": ["topicfilter/$aws/things/{thing}/jobs/*"],
    "topicfilter/$aws/things/{thing}*/shadow/*": ["topicfilter/$aws/things/{thing}/shadow/*"],
}


def _policy(thing: str = DEVICE, **overrides: str) -> dict[str, Any]:
    arguments = {
        "partition": "aws",
        "region": "eu-west-1",
        "account": "123456789012",
        "thing_name": thing,
        "role_alias": ROLE_ALIAS,
        "results_topic": "inspection/{thing}/results",
        "heartbeat_topic": "inspection/{thing}/heartbeat",
    }
    return device_policy_document(**{**arguments, **overrides})


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def allows(policy: dict[str, Any], action: str, resource: str) -> bool:
    """AWS IoT's evaluation for an Allow-only policy: `*` matches any characters; `+` and `#` are literal."""
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and "Condition" not in statement
        if action not in _as_list(statement["Action"]):
            continue
        for pattern in _as_list(statement["Resource"]):
            if re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), resource):
                return True
    return False


def _requests(thing: str) -> list[tuple[str, str]]:
    requests = []
    for actions, resources in GUIDE_MINIMAL:
        for resource in resources:
            concrete = CONCRETE.get(resource, [resource.replace("{thing}*", "{thing}")])
            for example in concrete:
                filled = example.format(thing=thing, alias=ROLE_ALIAS)
                arn = filled if filled == "*" else f"{ARN}:{filled}"
                if arn == "*":
                    arn = "arn:aws:greengrass:eu-west-1:123456789012:components:com.example.tag-inspection.ScratchModel"
                requests += [(action, arn) for action in actions]
    return requests


@pytest.mark.parametrize(("action", "resource"), _requests(DEVICE))
def test_everything_the_guides_minimal_policy_allows_the_device_is_allowed(action, resource):
    assert allows(_policy(), action, resource)


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        request
        for request in _requests(NEIGHBOUR)
        if ":greengrass:" not in request[1] and ":rolealias/" not in request[1]
    ]
    + [
        ("iot:Publish", f"{ARN}:topic/inspection/{NEIGHBOUR}/results"),
        ("iot:Publish", f"{ARN}:topic/inspection/{NEIGHBOUR}/heartbeat"),
        ("iot:AssumeRoleWithCertificate", f"{ARN}:rolealias/someone-elses-alias"),
        ("iot:Publish", f"{ARN}:topic/$aws/things/{DEVICE}2/shadow/update"),
    ],
)
def test_nothing_of_another_device_is_allowed(action, resource):
    assert not allows(_policy(), action, resource)


def test_the_device_publishes_its_own_results_and_heartbeat_and_no_other_application_topic():
    policy = _policy()
    assert allows(policy, "iot:Publish", f"{ARN}:topic/inspection/{DEVICE}/results")
    assert allows(policy, "iot:Publish", f"{ARN}:topic/inspection/{DEVICE}/heartbeat")
    assert not allows(policy, "iot:Publish", f"{ARN}:topic/inspection/{DEVICE}/anything-else")
    assert not allows(policy, "iot:Subscribe", f"{ARN}:topicfilter/inspection/{DEVICE}/results")
    configured = _policy(results_topic="plant-7/{thing}/detections")
    assert allows(configured, "iot:Publish", f"{ARN}:topic/plant-7/{DEVICE}/detections")


def test_no_thing_policy_variable_and_no_action_wildcard():
    text = json.dumps(_policy())
    assert "${" not in text and "iot:Connection.Thing" not in text
    actions = [action for statement in _policy()["Statement"] for action in _as_list(statement["Action"])]
    assert not [action for action in actions if "*" in action]
    # the one wildcard resource is the guide's, for the Greengrass data-plane actions
    wildcards = [s for s in _policy()["Statement"] if s["Resource"] == "*"]
    assert [sorted(s["Action"]) for s in wildcards] == [sorted(GUIDE_MINIMAL[-1][0])]


def test_policy_names_are_per_device_and_within_iots_limits():
    assert device_policy_name("tag-inspect-edge-device-", DEVICE) == "tag-inspect-edge-device-line-1-cam-1"
    long_a, long_b = "a" * 120 + "-x", "a" * 120 + "-y"
    name_a, name_b = (
        device_policy_name("tag-inspect-edge-device-", long_a),
        device_policy_name("tag-inspect-edge-device-", long_b),
    )
    assert len(name_a) == len(name_b) == 128 and name_a != name_b
    assert re.fullmatch(r"[\w+=,.@-]+", name_a)
    # a usual thing name keeps the document well under IoT's 2048 characters
    assert len(policy_json(_policy())) < MAX_POLICY_CHARACTERS - 400
