"""The device side of the cloud: thing group, what a device may do, and where its components come from.

* the thing group the deployments target;
* the component artifact bucket (KMS, TLS-only, versioned, access-logged);
* the Greengrass token exchange role and its IoT role alias: the AWS credentials every component on
  a device gets. Exactly: read component artifacts, write uncertain frames under the device's own
  `raw-images/edge/<thing name>/` folder of the data bucket, nothing else;
* no IoT policy: Greengrass core devices cannot use thing policy variables, so each device gets its own
  policy with its thing name written in, made by `register_device` (edge_deployment/device_policy.py).
"""

from __future__ import annotations

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
from shared.guardrails import allow
from shared.names import EDGE_UPLOAD_PREFIX, ResourceNames

# IAM policy variable the IoT credentials provider sets from the device's thing name.
CREDENTIALS_THING = "${credentials-iot:ThingName}"


class DeviceFleet(Construct):
    """Thing group, component bucket, token exchange role + role alias (device policies: register_device)."""

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
        allow(
            self.token_exchange_role,
            ["s3:GetObject"],
            [artifacts],
            sid="ReadComponentArtifacts",
            why="Devices read only the component artifacts under artifacts/ of the component bucket; each object "
            "is one component version's artifact, so the keys are not known in advance.",
        )
        allow(self.token_exchange_role, ["s3:GetBucketLocation"], [self.bucket.bucket_arn], sid="LocateArtifactBucket")
        self.key.grant_decrypt(self.token_exchange_role)
        uploads = f"arn:{stack.partition}:s3:::{shared_names.data_bucket}/{EDGE_UPLOAD_PREFIX}{CREDENTIALS_THING}/*"
        allow(
            self.token_exchange_role,
            ["s3:PutObject"],
            [uploads],
            sid="UploadUncertainFrames",
            why="Each device may only create new frames under raw-images/edge/<its own thing name>/ of the data "
            "bucket (the credentials provider sets credentials-iot:ThingName); file names are generated.",
        )
        grant_key_by_alias(
            self.token_exchange_role,
            alias=shared_names.data_key_alias,
            stack=stack,
            actions=["kms:GenerateDataKey"],
        )

        self.role_alias = iot.CfnRoleAlias(
            self,
            "RoleAlias",
            role_alias=names.role_alias,
            role_arn=self.token_exchange_role.role_arn,
            credential_duration_seconds=3600,
        )

    def grant_artifact_publishing(self, grantee: iam.IGrantable, *, component_name: str) -> None:
        """Let `grantee` write and read back one component's artifacts (never delete, never other components)."""
        prefix = f"{ARTIFACT_PREFIX}{component_name}/"
        objects = self.bucket.arn_for_objects(f"{prefix}*")
        allow(
            grantee,
            ["s3:GetObject", "s3:PutObject"],
            [objects],
            why=f"Artifacts of component {component_name} only: one object per component version, keys not known "
            "in advance.",
        )
        # Listing the prefix makes a missing artifact a 404 (not a 403) for HeadObject.
        allow(
            grantee,
            ["s3:ListBucket"],
            [self.bucket.bucket_arn],
            conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}},
        )
        self.key.grant(grantee, "kms:GenerateDataKey", "kms:Decrypt")
