"""The SageMaker pipeline as infrastructure: its definition, step code, roles and the champion lookup Lambda.

* The step code (`training/steps/` plus `shared/contracts.py`) is a CDK asset, twice: a zip for the
  processing jobs and a `sourcedir.tar.gz` for the training and tuning jobs (script mode). Both
  hashes change with the code and are referenced from the definition, so `cdk diff` shows every
  change and nothing is uploaded from a build script.
* Two roles, no SageMakerFullAccess: the **pipeline role** only starts, watches and tags this
  pipeline's jobs, passes the job role, invokes the champion lookup, registers packages in the
  group and reads the property files; the **job role** is what the processing and training
  containers run as (model bucket prefixes, raw images and the offline store read-only, the label
  feature group's description, the two container images, their logs and metrics).
* Other apps' resources (data bucket, its key, the feature group) are reached by name and alias.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import aws_cdk as cdk
import jsii
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from shared.building_blocks import grant_key_by_alias, python_function
from shared.code_bundle import bundle_files, code_bundle
from shared.config import Settings
from shared.guardrails import allow
from shared.names import OFFLINE_STORE_PREFIX, RAW_IMAGE_PREFIX, ResourceNames
from training.dlc_registry import image_repository_arn, resolve_image
from training.quiet_sdk import quiet_sdk

REPO_ROOT = Path(__file__).resolve().parent.parent
STEPS_DIR = REPO_ROOT / "training" / "steps"
STEP_PACKAGES = ("training/steps", "shared/runtime/model_registry.py")
SAGEMAKER = iam.ServicePrincipal("sagemaker.amazonaws.com")


def step_code_dir() -> Path:
    """The step code as it is imported (`training/steps/...`, `shared/contracts.py`), staged once per content."""
    return code_bundle("training-steps", STEP_PACKAGES)


@jsii.implements(cdk.ILocalBundling)
class _TrainingSourceBundling:
    """The same code as `sourcedir.tar.gz` for script mode: a requirements.txt at the root, which the
    training toolkit installs before the entry runs, made of requirements.lock: its hashes switch pip to
    hash-checking mode, as `--require-hashes` does for the processing jobs (run.sh). Fixed timestamps and
    order, so the same code always gives the same archive."""

    def try_bundle(self, output_dir: str, *, image: cdk.DockerImage, **_: object) -> bool:
        files = bundle_files(
            STEP_PACKAGES, extra_files={"requirements.txt": (STEPS_DIR / "requirements.lock").read_bytes()}
        )
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name in sorted(files):
                data = files[name]
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o755 if name.endswith(".sh") else 0o644, 0
                archive.addfile(info, io.BytesIO(data))
        with gzip.GzipFile(Path(output_dir) / "sourcedir.tar.gz", "wb", mtime=0) as compressed:
            compressed.write(buffer.getvalue())
        return True


def training_source_asset(scope: Construct, construct_id: str) -> s3_assets.Asset:
    """The step code for training and tuning jobs (script mode): one `.tar.gz` file, uploaded as it is."""
    return s3_assets.Asset(
        scope,
        construct_id,
        path=str(STEPS_DIR),
        bundling=cdk.BundlingOptions(
            image=cdk.DockerImage.from_registry("public.ecr.aws/docker/library/python:3.12-slim"),
            local=_TrainingSourceBundling(),
            output_type=cdk.BundlingOutput.ARCHIVED,
        ),
        asset_hash_type=cdk.AssetHashType.OUTPUT,
    )


def step_code_asset(scope: Construct, construct_id: str) -> s3_assets.Asset:
    """The step code for processing jobs: a zip of `step_code_dir()` (its hash changes with shared/contracts.py too)."""
    return s3_assets.Asset(scope, construct_id, path=str(step_code_dir()))


class TrainingPipeline(Construct):
    """`AWS::SageMaker::Pipeline` with its roles, step code and champion lookup Lambda function."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, names: ResourceNames) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        training = settings.training
        region = stack.region
        training_image = resolve_image(self, training.training_image)
        processing_image = resolve_image(self, training.processing_image)
        model_bucket_arn = f"arn:{stack.partition}:s3:::{names.model_bucket}"
        data_bucket_arn = f"arn:{stack.partition}:s3:::{names.data_bucket}"
        group_arn = stack.format_arn(
            service="sagemaker", resource="model-package-group", resource_name=names.model_package_group
        )
        packages_arn = stack.format_arn(
            service="sagemaker", resource="model-package", resource_name=f"{names.model_package_group}/*"
        )
        self.code = step_code_asset(self, "StepCode")
        self.source = training_source_asset(self, "TrainingSource")

        # -- the role the jobs run as -----------------------------------------------------------------
        self.job_role = iam.Role(
            self, "JobRole", assumed_by=SAGEMAKER, description="Processing and training jobs of the training pipeline"
        )
        allow(
            self.job_role,
            ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
            [
                f"{model_bucket_arn}/{prefix}*"
                for prefix in ("datasets/", "prepared/", "training-jobs/", "checkpoints/", "pipeline-runs/")
            ],
            why="Steps read and write only their own prefixes of the model bucket (outputs named per run or dataset).",
        )
        allow(
            self.job_role,
            ["s3:GetObject"],
            [f"{model_bucket_arn}/pretrained/*"],
            why="Pretrained weights the team uploads under pretrained/ (the PretrainedWeightsS3Uri parameter).",
        )
        allow(
            self.job_role,
            ["s3:ListBucket"],
            [model_bucket_arn],
            why="SageMaker lists S3Prefix inputs and syncs checkpoints.",
        )
        grant_key_by_alias(
            self.job_role,
            alias=names.model_key_alias,
            stack=stack,
            actions=["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"],
        )
        allow(
            self.job_role,
            ["s3:GetObject", "s3:GetObjectVersion"],
            [f"{data_bucket_arn}/{RAW_IMAGE_PREFIX}*", f"{data_bucket_arn}/{OFFLINE_STORE_PREFIX}*"],
            why="Export and prepare read raw images (any labeled one) and the label feature group's offline store",
        )
        # Listing (names only) lets export find the offline store's files, and S3 answer "no such key"
        # for a deleted image instead of "access denied" (the image is then reported and left out).
        allow(self.job_role, ["s3:ListBucket"], [data_bucket_arn])
        grant_key_by_alias(self.job_role, alias=names.data_key_alias, stack=stack, actions=["kms:Decrypt"])
        allow(
            self.job_role,
            ["sagemaker:DescribeFeatureGroup"],
            [stack.format_arn(service="sagemaker", resource="feature-group", resource_name=names.label_feature_group)],
        )
        code_bucket_arn = f"arn:{stack.partition}:s3:::{self.code.s3_bucket_name}"
        code_objects = [self.code.s3_object_key, self.source.s3_object_key]
        allow(self.job_role, ["s3:GetObject"], [f"{code_bucket_arn}/{key}" for key in code_objects])
        allow(
            self.job_role,
            ["s3:ListBucket"],
            [code_bucket_arn],
            conditions={"StringEquals": {"s3:prefix": code_objects}},
        )
        allow(
            self.job_role,
            ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
            # one repository ARN per configured repository (the tag does not matter to ECR permissions)
            [
                image_repository_arn(self, repository)
                for repository in sorted(
                    {image.rsplit(":", 1)[0] for image in (training.training_image, training.processing_image)}
                )
            ],
        )
        allow(
            self.job_role,
            ["ecr:GetAuthorizationToken"],
            ["*"],
            why="ecr:GetAuthorizationToken has no resource-level permissions; the statement above limits the images.",
        )
        log_groups = [
            stack.format_arn(
                service="logs",
                resource="log-group",
                resource_name=f"/aws/sagemaker/{kind}:*",
                arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
            )
            for kind in ("ProcessingJobs", "TrainingJobs")
        ]
        allow(
            self.job_role,
            ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            log_groups,
            why="Log streams of SageMaker processing and training jobs (one per job, named by SageMaker).",
        )
        allow(
            self.job_role,
            ["cloudwatch:PutMetricData"],
            ["*"],
            why="cloudwatch:PutMetricData has no resource-level permissions; the condition keeps SageMaker namespaces.",
            conditions={"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*"]}},
        )

        self.champion_function = self._champion_lookup(packages_arn)

        # -- the pipeline's own role ------------------------------------------------------------------
        self.pipeline_role = iam.Role(
            self, "PipelineRole", assumed_by=SAGEMAKER, description="Runs the training pipeline (starts its jobs)"
        )
        for resource, actions in (
            ("processing-job", ("CreateProcessingJob", "DescribeProcessingJob", "StopProcessingJob", "AddTags")),
            ("training-job", ("CreateTrainingJob", "DescribeTrainingJob", "StopTrainingJob", "AddTags")),
        ):
            allow(
                self.pipeline_role,
                [f"sagemaker:{action}" for action in actions],
                [stack.format_arn(service="sagemaker", resource=resource, resource_name="pipelines-*")],
                why=f"Pipelines name their {resource}s pipelines-<execution>-<step>-<suffix>: only those.",
            )
        allow(
            self.pipeline_role,
            [
                "sagemaker:CreateHyperParameterTuningJob",
                "sagemaker:DescribeHyperParameterTuningJob",
                "sagemaker:StopHyperParameterTuningJob",
                "sagemaker:ListTrainingJobsForHyperParameterTuningJob",
                "sagemaker:AddTags",
            ],
            [stack.format_arn(service="sagemaker", resource="hyper-parameter-tuning-job", resource_name="*")],
            why="The tuning step's job: tuning job names have at most 32 characters and the pipeline generates them "
            "without a documented prefix, so no narrower name pattern holds.",
        )
        allow(
            self.pipeline_role,
            ["sagemaker:CreateModelPackage", "sagemaker:DescribeModelPackage", "sagemaker:AddTags"],
            [group_arn, packages_arn],
            why="Registering versions in the one model package group this app owns.",
        )
        allow(
            self.pipeline_role,
            ["iam:PassRole"],
            [self.job_role.role_arn],
            conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
        )
        allow(self.pipeline_role, ["lambda:InvokeFunction"], [self.champion_function.function_arn])
        allow(
            self.pipeline_role,
            ["s3:GetObject"],
            [f"{model_bucket_arn}/pipeline-runs/*"],
            why="The pipeline reads its steps' property files (dataset and evaluation reports) of each run.",
        )
        grant_key_by_alias(self.pipeline_role, alias=names.model_key_alias, stack=stack, actions=["kms:Decrypt"])

        # -- the pipeline -----------------------------------------------------------------------------
        # Authored with the SageMaker Python SDK, imported here: only a training stack pays for its import.
        with quiet_sdk():
            from training.pipeline_definition import PipelineResources, pipeline_definition  # noqa: PLC0415

        resources = PipelineResources(
            pipeline_name=names.training_pipeline,
            role_arn=self.job_role.role_arn,
            model_bucket=names.model_bucket,
            model_key_arn=stack.format_arn(
                service="kms", resource="alias", resource_name=names.model_key_alias.removeprefix("alias/")
            ),
            code_uri=self.code.s3_object_url,
            source_uri=self.source.s3_object_url,
            code_version=self.code.asset_hash[:16],
            feature_group=names.label_feature_group,
            model_package_group=names.model_package_group,
            champion_function_arn=self.champion_function.function_arn,
            region=region,
            training_image=training_image,
            processing_image=processing_image,
        )
        self.definition = pipeline_definition(resources, training, settings.project.class_names)
        self.pipeline = sagemaker.CfnPipeline(
            self,
            "Pipeline",
            pipeline_name=names.training_pipeline,
            pipeline_display_name=names.training_pipeline,
            pipeline_description="Labels -> checked dataset -> YOLOv8 -> ONNX -> test metrics -> gate -> registry",
            role_arn=self.pipeline_role.role_arn,
            pipeline_definition={"PipelineDefinitionBody": stack.to_json_string(self.definition)},
        )
        # CloudFormation creates the pipeline only once its role may start the jobs.
        self.pipeline.node.add_dependency(self.pipeline_role.node.find_child("DefaultPolicy"))
        self.pipeline_arn = stack.format_arn(
            service="sagemaker", resource="pipeline", resource_name=names.training_pipeline
        )

    def _champion_lookup(self, packages_arn: str) -> lambda_.Function:
        """The Lambda step that finds the newest approved model package (the champion) and its archive."""
        function = python_function(
            self,
            "FindChampion",
            code_dir=step_code_dir(),
            handler="training.steps.gate.handler",
            description="Training pipeline: the newest approved model package (the champion) and its archive",
            timeout=cdk.Duration.seconds(60),
            powertools=False,
        )
        role = function.role
        assert isinstance(role, iam.Role)
        allow(
            role,
            ["sagemaker:ListModelPackages"],
            ["*"],
            why="sagemaker:ListModelPackages has no resource-level permissions (the group is a request parameter).",
        )
        allow(
            role,
            ["sagemaker:DescribeModelPackage"],
            [packages_arn],
            why="Versions of the one model package group this app owns (the newest approved one is read).",
        )
        return function
