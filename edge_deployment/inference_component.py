"""The inference component version, built by the asset pipeline from the recipe kept in the repo.

The component folder (`edge_deployment/components/inference/`, issue 6) is zipped as a CDK asset;
the asset pipeline uploads it. At deploy time a custom resource copies that ZIP into the component
bucket (so devices read only that bucket) and calls Greengrass CreateComponentVersion with the
rendered recipe. Component versions are immutable, so the version is derived from the content:
the same artifact and recipe give the same version (reused, nothing created), any change gives a
new one. The custom resource returns the version, and the workflow deploys exactly that version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from edge_deployment.components.inference.recipe import (
    INFERENCE_ARTIFACT_DIR,
    default_configuration,
    inference_recipe,
)
from edge_deployment.fleet import DeviceFleet
from edge_deployment.runtime.components import VERSION_PLACEHOLDER, artifact_key
from edge_deployment.runtime_bundle import HANDLER_MODULE, runtime_bundle
from shared.building_blocks import log_retention, python_function
from shared.config import Settings
from shared.guardrails import allow
from shared.names import EDGE_UPLOAD_PREFIX, ResourceNames

ARTIFACT_FILE = "inference.zip"
ASSET_EXCLUDES = ["__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", ".ruff_cache", "tests"]
# The recipe is rendered (and validated by inference_recipe) with these stand-ins for the bucket
# names, which are only known at deploy time; the rendered JSON then gets the real names.
COMPONENT_BUCKET_PLACEHOLDER = "edge-component-bucket-placeholder"
UPLOAD_BUCKET_PLACEHOLDER = "edge-upload-bucket-placeholder"


def inference_configuration(settings: Settings, *, upload_bucket: str) -> dict[str, Any]:
    """The inference component's configuration (the keys the device component reads), every value from the settings."""
    edge = settings.edge_deployment
    values: dict[str, Any] = {
        "resultsTopic": edge.results_topic,
        "heartbeatTopic": edge.heartbeat_topic,
        "heartbeatIntervalSeconds": edge.heartbeat_interval_seconds,
        "framesDirectory": edge.frames_directory,
        "frameIntervalSeconds": edge.frame_interval_seconds,
        "uncertaintyBand": list(edge.uncertainty_band),
        "confidentSampleRate": edge.confident_sample_rate,
        "uploadBucket": upload_bucket,
        "uploadPrefix": EDGE_UPLOAD_PREFIX,
        "offlineQueueMaxMB": edge.offline_queue_mb,
        "outboxMaxMB": edge.outbox_mb,
        "modelComponentName": edge.model_component_name,
        "precision": edge.model_precision,
        "int8MaxMap50Loss": edge.int8_max_map50_loss,
        "executionProviders": list(edge.execution_providers),
    }
    if edge.confidence_threshold is not None:
        values["confidenceThreshold"] = edge.confidence_threshold
    if edge.iou_threshold is not None:
        values["iouThreshold"] = edge.iou_threshold
    return dict(default_configuration(**values))


def inference_recipe_template(settings: Settings, *, artifact_uri: str, upload_bucket: str) -> dict[str, Any]:
    """The recipe with VERSION_PLACEHOLDER where the (content-derived) version goes."""
    edge = settings.edge_deployment
    recipe = inference_recipe(
        component_name=edge.inference_component_name,
        component_version=VERSION_PLACEHOLDER,
        artifact_uri=artifact_uri,
        model_component_name=edge.model_component_name,
        configuration=inference_configuration(settings, upload_bucket=upload_bucket),
    )
    _check_template(recipe, settings=settings, artifact_uri=artifact_uri)
    return recipe


def _check_template(recipe: Mapping[str, Any], *, settings: Settings, artifact_uri: str) -> None:
    """Fail synth, not the deploy, when the recipe does not fit what this app publishes."""
    edge = settings.edge_deployment
    problems = []
    if recipe.get("RecipeFormatVersion") != "2020-01-25":
        problems.append("RecipeFormatVersion must be 2020-01-25")
    if recipe.get("ComponentName") != edge.inference_component_name:
        problems.append(f"ComponentName must be {edge.inference_component_name}")
    if recipe.get("ComponentVersion") != VERSION_PLACEHOLDER:
        problems.append("ComponentVersion must be the version passed in")
    uris = {a.get("Uri") for m in recipe.get("Manifests", []) for a in m.get("Artifacts", [])}
    if uris != {artifact_uri}:
        problems.append(f"the only artifact must be {artifact_uri} (found {sorted(map(str, uris))})")
    if problems:
        raise ValueError("inference_recipe(): " + "; ".join(problems))


class InferenceComponent(Construct):
    """Asset + custom resource that publishes the inference component version; `.version` is its version."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        fleet: DeviceFleet,
        shared_names: ResourceNames,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        edge = settings.edge_deployment
        self.asset = s3_assets.Asset(self, "Artifact", path=str(INFERENCE_ARTIFACT_DIR), exclude=ASSET_EXCLUDES)
        key_template = artifact_key(edge.inference_component_name, VERSION_PLACEHOLDER, ARTIFACT_FILE)
        self.recipe_template = inference_recipe_template(
            settings,
            artifact_uri=f"s3://{COMPONENT_BUCKET_PLACEHOLDER}/{key_template}",
            upload_bucket=UPLOAD_BUCKET_PLACEHOLDER,
        )
        recipe_json = (
            json.dumps(self.recipe_template, sort_keys=True)
            .replace(COMPONENT_BUCKET_PLACEHOLDER, fleet.bucket.bucket_name)
            .replace(UPLOAD_BUCKET_PLACEHOLDER, shared_names.data_bucket)
        )

        self.function = python_function(
            self,
            "PublishFunction",
            code_dir=runtime_bundle(),
            handler=f"{HANDLER_MODULE}.inference_component",
            description=f"Publishes the {edge.inference_component_name} component version (deploy time)",
            timeout=cdk.Duration.minutes(5),
            log_retention=log_retention(settings.toolchain.log_retention_days),
        )
        # Read exactly the uploaded asset, write and read back the copy in the component bucket.
        allow(
            self.function,
            ["s3:GetObject"],
            [f"arn:{stack.partition}:s3:::{self.asset.s3_bucket_name}/{self.asset.s3_object_key}"],
            sid="ReadInferenceAsset",
        )
        fleet.grant_artifact_publishing(self.function, component_name=edge.inference_component_name)
        component = stack.format_arn(
            service="greengrass",
            resource="components",
            resource_name=edge.inference_component_name,
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )
        allow(self.function, ["greengrass:CreateComponentVersion"], [component], sid="PublishInferenceComponent")
        allow(
            self.function,
            ["greengrass:DescribeComponent", "greengrass:GetComponent"],
            [f"{component}:versions:*"],
            sid="ReadInferenceComponentVersions",
            why="Versions of the inference component: the function checks whether a version exists before creating it.",
        )

        self.resource = cdk.CustomResource(
            self,
            "Version",
            service_token=self.function.function_arn,
            resource_type="Custom::GreengrassComponentVersion",
            properties={
                "ArtifactHash": self.asset.asset_hash,
                "SourceBucket": self.asset.s3_bucket_name,
                "SourceKey": self.asset.s3_object_key,
                "Bucket": fleet.bucket.bucket_name,
                "KeyTemplate": key_template,
                "RecipeTemplate": recipe_json,
            },
        )
        self.version = self.resource.get_att_string("ComponentVersion")
        self.arn = self.resource.get_att_string("ComponentArn")
