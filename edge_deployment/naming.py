"""Names the edge deployment app gives its own resources, shared by the stacks and the device scripts.

Everything other apps own is named by `shared.names`; these are the edge app's own names that a
person or a script needs outside CloudFormation (registering a device needs the role alias by name,
and names the device's own IoT policy).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_deployment import APP
from shared.config import Settings
from shared.names import resource_names


@dataclass(frozen=True)
class EdgeNames:
    prefix: str
    account: str
    region: str
    thing_group: str
    deployment_name: str
    inference_component: str
    model_component: str
    results_topic: str
    heartbeat_topic: str
    metrics_namespace: str  # of the device metrics (edge_deployment/runtime/telemetry.py)
    alarm_prefix: str  # the app's alarm names start with it: only those may publish to its topic
    notification_topic: str

    @property
    def role_alias(self) -> str:
        """IoT role alias of the Greengrass token exchange role (the installer's iotRoleAlias)."""
        return f"{self.prefix}-edge-token-exchange"

    @property
    def device_policy_prefix(self) -> str:
        """Each device's own IoT policy is named this plus its thing name (edge_deployment/device_policy.py)."""
        return f"{self.prefix}-edge-device-"

    @property
    def notification_topic_arn(self) -> str:
        return f"arn:{partition(self.region)}:sns:{self.region}:{self.account}:{self.notification_topic}"

    @property
    def component_key_alias(self) -> str:
        return f"alias/{self.prefix}-edge-components"


def edge_names(settings: Settings, *, account: str, region: str) -> EdgeNames:
    edge = settings.edge_deployment
    shared = resource_names(settings, account=account, region=region)
    return EdgeNames(
        prefix=shared.prefix,
        account=account,
        region=region,
        thing_group=edge.thing_group_name,
        deployment_name=edge.effective_deployment_name,
        inference_component=edge.inference_component_name,
        model_component=edge.model_component_name,
        results_topic=edge.results_topic,
        heartbeat_topic=edge.heartbeat_topic,
        metrics_namespace=edge.telemetry.metrics_namespace or f"{shared.prefix}/Devices",
        alarm_prefix=shared.alarm_prefix(APP),
        notification_topic=shared.notification_topic(APP),
    )


THING_PLACEHOLDER = "{thing}"  # one whole level of a configured topic (checked by shared.config)


def device_topic(template: str, thing: str) -> str:
    """A configured topic for one device (`{thing}` is the device's thing name)."""
    return template.replace(THING_PLACEHOLDER, thing)


def topic_filter(template: str) -> str:
    """The MQTT filter that covers a configured topic on every device: `{thing}` becomes `+`."""
    return "/".join("+" if level == THING_PLACEHOLDER else level for level in template.split("/"))


def thing_level(template: str) -> int:
    """The 1-based level of `{thing}` in a configured topic (IoT SQL's `topic(n)`)."""
    return template.split("/").index(THING_PLACEHOLDER) + 1


def partition(region: str) -> str:
    """The AWS partition of a region (for ARNs written outside CloudFormation)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"
