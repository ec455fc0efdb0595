"""The data the labeling app owns and other apps read: the data bucket, its key and the label feature group.

* **Data bucket** (`names.data_bucket`): raw images under `raw-images/` (devices upload under
  `raw-images/edge/`), Ground Truth job files under `labeling-jobs/` (the only prefix with a lifecycle
  rule), the feature group's offline store under `feature-store/`. KMS (`names.data_key_alias`),
  TLS-only, private, versioned, access-logged, retained; deleting a raw image is denied by the bucket
  policy; CORS lets Ground Truth's worker portal load the images.
* **Label feature group** (`names.label_feature_group`): the `LabelRecord` schema, online store (the
  workflow reads each image's newest label from it) and offline store (what training reads) encrypted
  with the data key, Glue table `label_catalog_database.label_catalog_table`.
* **Seed labels** (optional): a file shipped as an asset and imported by a custom resource.

Everything that holds data is retained when the stack is deleted. Redeploying after a delete would collide
with the retained names, so `labeling.adopt_existing_data: true` makes this construct use them instead
of creating them (see labeling/README.md, "Destroy and redeploy").
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_glue as glue
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from labeling.functions import REPO_ROOT, labeling_function, runtime_config
from labeling.runtime.config import ENVIRONMENT_VARIABLE
from shared.building_blocks import access_log_bucket, encryption_key, grant_key_by_alias, secure_bucket
from shared.config import ConfigError, Settings
from shared.contracts import EVENT_TIME, LABEL_FEATURES, RECORD_IDENTIFIER
from shared.guardrails import IAM5, acknowledge, allow, finding
from shared.names import LABELING_JOBS_PREFIX, OFFLINE_STORE_PREFIX, RAW_IMAGE_PREFIX, ResourceNames


def feature_store_role_name(names: ResourceNames) -> str:
    """Fixed, so that a retained feature group (which cannot change its role) finds it again."""
    return f"{names.prefix}-label-feature-store"


def feature_group_arn(stack: cdk.Stack, names: ResourceNames) -> str:
    return stack.format_arn(service="sagemaker", resource="feature-group", resource_name=names.label_feature_group)


def object_arn(stack: cdk.Stack, bucket_name: str, key_pattern: str) -> str:
    return stack.format_arn(service="s3", region="", account="", resource=bucket_name, resource_name=key_pattern)


class LabelDataStore(Construct):
    """The data bucket, its KMS key, the label feature group and its catalog (created, or adopted by name)."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, names: ResourceNames) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.names = names
        self.adopted = settings.labeling.adopt_existing_data
        self.feature_group: sagemaker.CfnFeatureGroup | None = None
        self.key: kms.IKey | None = None
        if self.adopted:
            self.bucket: s3.IBucket = s3.Bucket.from_bucket_name(self, "DataBucket", names.data_bucket)
            return
        key = encryption_key(
            self,
            "DataKey",
            alias=names.data_key_alias,
            description=f"{names.prefix}: raw images, labeling job files and the label feature group",
            retain=True,
        )
        alias = key.node.try_find_child("Alias")
        if isinstance(alias, cdk.Resource):
            alias.apply_removal_policy(cdk.RemovalPolicy.RETAIN)  # readers find the retained key by this alias
        self.key = key
        bucket = secure_bucket(
            self,
            "DataBucket",
            key=key,
            access_logs=access_log_bucket(self, "AccessLogs"),
            bucket_name=names.data_bucket,
            retain=True,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-labeling-job-files",
                    prefix=LABELING_JOBS_PREFIX,
                    expiration=cdk.Duration.days(settings.labeling.job_files_retention_days),
                    noncurrent_version_expiration=cdk.Duration.days(7),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(7),
                )
            ],
        )
        # Ground Truth's worker portal fetches the images with pre-signed URLs from the browser.
        bucket.add_cors_rule(
            allowed_methods=[s3.HttpMethods.GET],
            allowed_origins=["*"],
            exposed_headers=["Access-Control-Allow-Origin"],
        )
        bucket.add_to_resource_policy(
            iam.PolicyStatement(
                sid="RawImagesAreNeverDeleted",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["s3:DeleteObject", "s3:DeleteObjectVersion"],
                resources=[bucket.arn_for_objects(f"{RAW_IMAGE_PREFIX}*")],
            )
        )
        self.bucket = bucket
        self._feature_group(stack, settings, names, key, bucket)

    def _feature_group(
        self, stack: cdk.Stack, settings: Settings, names: ResourceNames, key: kms.Key, bucket: s3.Bucket
    ) -> None:
        role = iam.Role(
            self,
            "FeatureStoreRole",
            role_name=feature_store_role_name(names),
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="Feature Store writes the label feature group's offline store with this role",
        )
        role.apply_removal_policy(cdk.RemovalPolicy.RETAIN)
        offline_objects = bucket.arn_for_objects(f"{OFFLINE_STORE_PREFIX}*")
        policy = iam.Policy(
            self,
            "FeatureStorePolicy",
            roles=[role],
            statements=[
                iam.PolicyStatement(actions=["s3:PutObject", "s3:PutObjectAcl"], resources=[offline_objects]),
                iam.PolicyStatement(actions=["s3:GetBucketAcl"], resources=[bucket.bucket_arn]),
                iam.PolicyStatement(actions=["kms:GenerateDataKey", "kms:Decrypt"], resources=[key.key_arn]),
            ],
        )
        policy.apply_removal_policy(cdk.RemovalPolicy.RETAIN)  # the retained feature group keeps writing
        acknowledge(  # a policy of its own (kept with the feature group), so not `allow`'s role policy
            policy,
            IAM5,
            "Feature Store writes the offline store's parquet files under feature-store/ only.",
            finding=finding(policy, "Resource", offline_objects),
        )
        database = glue.CfnDatabase(
            self,
            "CatalogDatabase",
            catalog_id=stack.account,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=names.label_catalog_database,
                description=f"{names.prefix}: catalog of the label feature group's offline store",
            ),
        )
        database.apply_removal_policy(cdk.RemovalPolicy.RETAIN)
        feature_group = sagemaker.CfnFeatureGroup(
            self,
            "LabelFeatureGroup",
            feature_group_name=names.label_feature_group,
            description="Verified bounding-box labels of the raw images (one record per image URI)",
            record_identifier_feature_name=RECORD_IDENTIFIER,
            event_time_feature_name=EVENT_TIME,
            feature_definitions=[
                sagemaker.CfnFeatureGroup.FeatureDefinitionProperty(feature_name=name, feature_type=kind)
                for name, kind in LABEL_FEATURES.items()
            ],
            online_store_config={
                "EnableOnlineStore": True,
                "StorageType": "Standard",
                "SecurityConfig": {"KmsKeyId": key.key_arn},
            },
            offline_store_config={
                "S3StorageConfig": {
                    "S3Uri": f"s3://{bucket.bucket_name}/{OFFLINE_STORE_PREFIX.rstrip('/')}",
                    "KmsKeyId": key.key_arn,
                },
                "DisableGlueTableCreation": False,
                "DataCatalogConfig": {
                    "Catalog": "AwsDataCatalog",
                    "Database": names.label_catalog_database,
                    "TableName": names.label_catalog_table,
                },
                "TableFormat": "Glue",
            },
            role_arn=role.role_arn,
        )
        feature_group.apply_removal_policy(cdk.RemovalPolicy.RETAIN)
        feature_group.node.add_dependency(policy, database, bucket)
        self.feature_group = feature_group


class LabelSeeding(Construct):
    """Imports `labeling.seed_labels_file` into the feature group on deploy (again whenever the file changes)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        names: ResourceNames,
        data_store: LabelDataStore,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        relative = settings.labeling.seed_labels_file
        if relative is None:
            raise ValueError("LabelSeeding needs labeling.seed_labels_file")
        path = REPO_ROOT / relative
        if not path.is_file():
            raise ConfigError(
                f"labeling.seed_labels_file: {relative} does not exist (paths are relative to {REPO_ROOT})"
            )
        asset = s3_assets.Asset(self, "SeedFile", path=str(path))
        function = labeling_function(
            self,
            "SeedFunction",
            handler="seed_resource",
            description=f"Imports the seed labels {path.name} into {names.label_feature_group}",
            environment={ENVIRONMENT_VARIABLE: runtime_config(settings, names).to_json()},
            settings=settings,
            timeout=cdk.Duration.minutes(15),
        )
        allow(function, ["s3:GetObject"], [object_arn(stack, asset.s3_bucket_name, asset.s3_object_key)])
        allow(function, ["sagemaker:BatchGetRecord", "sagemaker:PutRecord"], [feature_group_arn(stack, names)])
        reports = object_arn(stack, names.data_bucket, f"{LABELING_JOBS_PREFIX}seed-reports/*")
        allow(function, ["s3:PutObject"], [reports], why="Writes its import report under labeling-jobs/seed-reports/.")
        grant_key_by_alias(
            function, alias=names.data_key_alias, stack=stack, actions=["kms:Decrypt", "kms:GenerateDataKey"]
        )
        self.function = function
        self.resource = cdk.CustomResource(
            self,
            "Seed",
            service_token=function.function_arn,
            resource_type="Custom::LabelSeed",
            properties={
                "SeedBucket": asset.s3_bucket_name,
                "SeedKey": asset.s3_object_key,
                "FileName": path.name,
                "BaseUri": f"s3://{names.data_bucket}/{RAW_IMAGE_PREFIX}",
                "FeatureGroup": names.label_feature_group,
            },
        )
        if data_store.feature_group is not None:
            self.resource.node.add_dependency(data_store.feature_group)
        # The function's policy must exist before CloudFormation invokes it.
        if function.role is not None:
            self.resource.node.add_dependency(function.role)
