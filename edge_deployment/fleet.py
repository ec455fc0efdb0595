"""The device side of the cloud: thing group, what a device may do, and where its components come from.

* the thing group the deployments target;
* the component artifact bucket (KMS, TLS-only, versioned, access-logged);
* the Greengrass token exchange role and its IoT role alias: the AWS credentials every component on
  a device gets. Exactly: read component artifacts, write uncertain frames under the device's own
  `raw-images/edge/<thing name>/` folder of the data bucket, nothing else;
* the IoT policy of every device certificate: connect as itself, its own Greengrass job, shadow
  and health topics, its result and heartbeat topics, the token exchange, and the four Greengrass
  data-plane actions a core device calls.
"""

from __future__ import annotations

import re
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_iot as iot
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from edge_deployment.naming import EdgeNames
from edge_deployment.runtime.components import ARTIFACT_PREFIX
from shared.building_blocks import access_log_bucket, encryption_key, grant_key_by_alias, secure_bucket
from shared.config import Settings
from shared.guardrails import IAM5, acknowledge, render
from shared.names import EDGE_UPLOAD_PREFIX, ResourceNames

# IoT policy variable: the thing the connecting certificate is (exclusively) attached to.
THING = "${iot:Connection.Thing.ThingName}"
# IAM policy variable the IoT credentials provider sets from the device's thing name.
CREDENTIALS_THING = "${credentials-iot:ThingName}"
# What the Greengrass nucleus calls on the Greengrass data plane with its certificate. These calls
# are authorized without thing policy variables, and AWS's minimal core-device policy grants them on
# "*": the one wildcard of the device policy.
GREENGRASS_DATA_PLANE_ACTIONS = (
    "greengrass:GetComponentVersionArtifact",
    "greengrass:ResolveComponentCandidates",
    "greengrass:GetDeploymentConfiguration",
    "greengrass:ListThingGroupsForCoreDevice",
)


def resource_finding(stack: cdk.Stack, resource: str) -> str:
    """The cdk-nag IAM5 finding id of a wildcard resource, as cdk-nag writes it (`${var}` becomes `<var>`)."""
    return "Resource::" + re.sub(r"\$\{([^}]*)\}", r"<\1>", render(stack.resolve(resource)))


def device_policy_document(
    stack: cdk.Stack, *, settings: Settings, role_alias_arn: str, thing: str = THING
) -> dict[str, Any]:
    """The IoT policy of a core device; `thing` is the policy variable (or a name, for reading/tests)."""
    edge = settings.edge_deployment

    def arn(resource: str, name: str) -> str:
        return stack.format_arn(service="iot", resource=resource, resource_name=name)

    own = f"$aws/things/{thing}"
    greengrass_topics = [f"{own}/greengrass/health/json", f"{own}/greengrassv2/health/json", f"{own}/jobs/*"]
    shadow = f"{own}/shadow/*"
    app_topics = sorted({edge.results_topic.replace("{thing}", thing), edge.heartbeat_topic.replace("{thing}", thing)})
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ConnectAsItself",
                "Effect": "Allow",
                "Action": "iot:Connect",
                # The nucleus opens further connections as <thing>#2, #3... when it needs more subscriptions.
                "Resource": [arn("client", thing), arn("client", f"{thing}#*")],
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
            {
                "Sid": "OwnGreengrassTopics",
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": [arn("topic", topic) for topic in [*greengrass_topics, shadow]],
            },
            {
                "Sid": "OwnGreengrassSubscriptions",
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [arn("topicfilter", f"{own}/jobs/*"), arn("topicfilter", shadow)],
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
                "Resource": role_alias_arn,
            },
            {
                "Sid": "GreengrassDataPlane",
                "Effect": "Allow",
                "Action": list(GREENGRASS_DATA_PLANE_ACTIONS),
                "Resource": "*",
            },
        ],
    }


class DeviceFleet(Construct):
    """Thing group, component bucket, token exchange role + role alias, device IoT policy."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        names: EdgeNames,
        shared_names: ResourceNames,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        edge = settings.edge_deployment

        self.thing_group = iot.CfnThingGroup(
            self,
            "ThingGroup",
            thing_group_name=edge.thing_group_name,
            thing_group_properties=iot.CfnThingGroup.ThingGroupPropertiesProperty(
                thing_group_description=f"{settings.project.prefix}: inspection devices that run the scratch detector"
            ),
        )
        self.thing_group_arn = self.thing_group.attr_arn

        self.key: kms.Key = encryption_key(
            self,
            "ComponentKey",
            alias=names.component_key_alias,
            description="Encrypts the edge component artifacts (inference code, model.zip of each model)",
            retain=True,
        )
        self.bucket: s3.Bucket = secure_bucket(
            self,
            "ComponentBucket",
            key=self.key,
            access_logs=access_log_bucket(self, "ComponentAccessLogs"),
            retain=True,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-replaced-artifact-versions",
                    noncurrent_version_expiration=cdk.Duration.days(90),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(1),
                )
            ],
        )

        self.token_exchange_role = iam.Role(
            self,
            "TokenExchangeRole",
            assumed_by=iam.ServicePrincipal("credentials.iot.amazonaws.com"),
            description="Greengrass token exchange role: read component artifacts, upload uncertain frames",
            max_session_duration=cdk.Duration.hours(1),
        )
        artifacts = self.bucket.arn_for_objects(f"{ARTIFACT_PREFIX}*")
        self.token_exchange_role.add_to_policy(
            iam.PolicyStatement(sid="ReadComponentArtifacts", actions=["s3:GetObject"], resources=[artifacts])
        )
        self.token_exchange_role.add_to_policy(
            iam.PolicyStatement(
                sid="LocateArtifactBucket", actions=["s3:GetBucketLocation"], resources=[self.bucket.bucket_arn]
            )
        )
        self.key.grant_decrypt(self.token_exchange_role)
        uploads = f"arn:{stack.partition}:s3:::{shared_names.data_bucket}/{EDGE_UPLOAD_PREFIX}{CREDENTIALS_THING}/*"
        self.token_exchange_role.add_to_policy(
            iam.PolicyStatement(sid="UploadUncertainFrames", actions=["s3:PutObject"], resources=[uploads])
        )
        grant_key_by_alias(
            self.token_exchange_role,
            alias=shared_names.data_key_alias,
            stack=stack,
            actions=["kms:GenerateDataKey"],
        )
        acknowledge(
            self.token_exchange_role,
            IAM5,
            "Devices read only the component artifacts under artifacts/ of the component bucket; each object "
            "is one component version's artifact, so the keys are not known in advance.",
            finding=resource_finding(stack, artifacts),
        )
        acknowledge(
            self.token_exchange_role,
            IAM5,
            "Each device may only create new frames under raw-images/edge/<its own thing name>/ of the data "
            "bucket (the credentials provider sets credentials-iot:ThingName); file names are generated.",
            finding=resource_finding(stack, uploads),
        )

        self.role_alias = iot.CfnRoleAlias(
            self,
            "RoleAlias",
            role_alias=names.role_alias,
            role_arn=self.token_exchange_role.role_arn,
            credential_duration_seconds=3600,
        )
        self.device_policy = iot.CfnPolicy(
            self,
            "DevicePolicy",
            policy_name=names.iot_policy,
            policy_document=device_policy_document(
                stack, settings=settings, role_alias_arn=self.role_alias.attr_role_alias_arn
            ),
        )

    def grant_artifact_publishing(self, grantee: iam.IGrantable, *, component_name: str) -> None:
        """Let `grantee` write and read back one component's artifacts (never delete, never other components)."""
        prefix = f"{ARTIFACT_PREFIX}{component_name}/"
        objects = self.bucket.arn_for_objects(f"{prefix}*")
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(actions=["s3:GetObject", "s3:PutObject"], resources=[objects])
        )
        # Listing the prefix makes a missing artifact a 404 (not a 403) for HeadObject.
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[self.bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}},
            )
        )
        self.key.grant(grantee, "kms:GenerateDataKey", "kms:Decrypt")
        principal = grantee.grant_principal
        if not isinstance(principal, Construct):
            raise TypeError(f"{principal} is not a construct (a role of this app)")
        acknowledge(
            principal,
            IAM5,
            f"Artifacts of component {component_name} only: one object per component version, keys not known "
            "in advance.",
            finding=resource_finding(cdk.Stack.of(self), objects),
        )
