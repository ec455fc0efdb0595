"""The AWS IoT policy of one inspection device (a Greengrass core device), its thing name written in.

The Greengrass V2 developer guide ("Device authentication and authorization", AWS IoT policies) says
thing policy variables (`iot:Connection.Thing.*`) are not supported in the IoT policies of core
devices, nor for Greengrass data-plane calls. So each device gets its own policy, with its thing name
as a literal, created by `register_device` (and removed with the device). It grants what the guide's
minimal core-device policy grants, narrowed to this device:

* connect as the thing, and as `<thing>#2`, `#3`, ... (the nucleus opens one more connection per 50
  subscriptions and names it that way);
* publish, receive and subscribe under its own `$aws/things/<thing>/` (the guide lists the health, jobs
  and shadow topics there one by one; one entry keeps the document within IoT's 2048 characters for
  thing names up to 128 characters), and read/write its own shadow;
* publish its results and heartbeat topics (edge_deployment.results_topic / heartbeat_topic);
* use the app's role alias (the token exchange role);
* the four Greengrass data-plane actions, which the guide grants on `*`.

Plain Python (no CDK): `register_device` and the simulated device's boot script use it, and tests
compare it with the guide's minimal policy.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from edge_deployment.naming import device_topic

# What the Greengrass nucleus calls on the Greengrass data plane with its certificate; the guide's
# minimal policy grants them on "*" (the only wildcard resource of the device policy).
GREENGRASS_DATA_PLANE_ACTIONS = (
    "greengrass:GetComponentVersionArtifact",
    "greengrass:ResolveComponentCandidates",
    "greengrass:GetDeploymentConfiguration",
    "greengrass:ListThingGroupsForCoreDevice",
)
SHADOW_ACTIONS = ("iot:GetThingShadow", "iot:UpdateThingShadow", "iot:DeleteThingShadow")
MAX_POLICY_NAME = 128
MAX_POLICY_CHARACTERS = 2048
"""AWS IoT Core's limit on a policy document (white space not counted)."""


def device_policy_name(prefix: str, thing_name: str) -> str:
    """`<prefix><thing>`, or, when that is longer than IoT allows, a shortened thing name and its hash."""
    name = f"{prefix}{thing_name}"
    if len(name) <= MAX_POLICY_NAME:
        return name
    digest = hashlib.sha256(thing_name.encode()).hexdigest()[:12]
    return f"{prefix}{thing_name[: MAX_POLICY_NAME - len(prefix) - 13]}-{digest}"


def device_policy_document(
    *,
    partition: str,
    region: str,
    account: str,
    thing_name: str,
    role_alias: str,
    results_topic: str,
    heartbeat_topic: str,
) -> dict[str, Any]:
    """The IoT policy document of the device `thing_name`."""

    def arn(resource: str, name: str) -> str:
        return f"arn:{partition}:iot:{region}:{account}:{resource}/{name}"

    own = f"$aws/things/{thing_name}/*"  # its health, jobs and shadow topics (the guide names them one by one)
    app_topics = sorted({device_topic(results_topic, thing_name), device_topic(heartbeat_topic, thing_name)})
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ConnectAsItself",
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": [arn("client", thing_name), arn("client", f"{thing_name}#*")],
            },
            {
                "Sid": "OwnThingTopics",
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": arn("topic", own),
            },
            {
                "Sid": "OwnThingSubscriptions",
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": arn("topicfilter", own),
            },
            {
                "Sid": "OwnShadow",
                "Effect": "Allow",
                "Action": list(SHADOW_ACTIONS),
                "Resource": arn("thing", thing_name),
            },
            {
                "Sid": "OwnResultsAndHeartbeat",
                "Effect": "Allow",
                "Action": "iot:Publish",
                "Resource": [arn("topic", topic) for topic in app_topics],
            },
            {
                "Sid": "TokenExchange",
                "Effect": "Allow",
                "Action": "iot:AssumeRoleWithCertificate",
                "Resource": arn("rolealias", role_alias),
            },
            {
                "Sid": "GreengrassDataPlane",
                "Effect": "Allow",
                "Action": list(GREENGRASS_DATA_PLANE_ACTIONS),
                "Resource": "*",
            },
        ],
    }


def policy_json(document: dict[str, Any]) -> str:
    """The document as CreatePolicy takes it (compact: IoT policies are at most 2048 characters)."""
    return json.dumps(document, separators=(",", ":"))
