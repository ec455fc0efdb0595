"""The training app's lasting resources: the model bucket, its KMS key and the model package group.

They outlive any pipeline change and are read by the edge deployment app by name (bucket name, key
alias, package group name from `shared.names`), so they live in their own stack, are retained when it
is deleted, and nothing in them points at another stack.

Model bucket layout (prefixes):
  datasets/<version>/manifest.json          dataset manifests, kept (they recreate every dataset)
  pipeline-runs/<execution>/...             QA and evaluation reports, the model archives packages point to; kept
  prepared/<version>-<code>/                YOLO-layout datasets (cache of the prepare step), expire
  training-jobs/<job>/output/model.tar.gz   raw training outputs (cache of the training step), expire
  checkpoints/...                           spot/retry checkpoints, expire
  pretrained/                               pretrained weights the team uploads for the PretrainedWeightsS3Uri parameter
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from shared.building_blocks import access_log_bucket, encryption_key, secure_bucket
from shared.names import ResourceNames

KEPT_PREFIXES = ("datasets/", "pipeline-runs/", "pretrained/")
EXPIRING_PREFIXES = {"prepared/": 0, "training-jobs/": 0, "checkpoints/": 30}  # 0: cache days + 60


class ModelRegistry(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, names: ResourceNames, cache_days: int) -> None:
        super().__init__(scope, construct_id)
        self.key = encryption_key(
            self,
            "Key",
            alias=names.model_key_alias,
            description="Encrypts the model bucket: datasets, checkpoints, model archives",
            retain=True,
        )
        access_logs = access_log_bucket(self, "AccessLogs")
        self.bucket = secure_bucket(
            self,
            "Bucket",
            key=self.key,
            access_logs=access_logs,
            bucket_name=names.model_bucket,
            retain=True,
            lifecycle_rules=[
                *(
                    s3.LifecycleRule(
                        id=f"expire-{prefix.rstrip('/')}",
                        prefix=prefix,
                        expiration=cdk.Duration.days(days or cache_days + 60),
                    )
                    for prefix, days in EXPIRING_PREFIXES.items()
                ),
                s3.LifecycleRule(
                    id="old-versions-and-uploads",
                    noncurrent_version_expiration=cdk.Duration.days(30),
                    abort_incomplete_multipart_upload_after=cdk.Duration.days(7),
                ),
            ],
        )
        self.package_group = sagemaker.CfnModelPackageGroup(
            self,
            "PackageGroup",
            model_package_group_name=names.model_package_group,
            model_package_group_description=(
                "YOLOv8 scratch detectors (ONNX) registered by the training pipeline; "
                "approving a package deploys it to the edge devices"
            ),
        )
        # Model packages are the record of every model ever deployed: never deleted with the stack.
        self.package_group.apply_removal_policy(cdk.RemovalPolicy.RETAIN)
