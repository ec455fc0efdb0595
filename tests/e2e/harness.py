"""The whole loop on this machine: raw images -> labels -> model -> registry -> edge -> device -> raw images.

Every app runs its own code; AWS is replaced only at the service boundary:

* S3, SageMaker (feature group description, model registry), EventBridge pattern matching: moto.
* Step Functions: both state machines run in moto's executor (the suite's one harness,
  tests/helpers/state_machine.py); the edge workflow's Greengrass SDK task (moto has no Greengrass v2)
  is answered by the stubbed Greengrass client.
* Ground Truth: `FakeGroundTruth` writes output manifests exactly as a job does, here with the boxes
  drawn into the synthetic images (rounded to whole pixels, as workers' boxes are).
* Label Studio: a real server on loopback (`labeling/local/server.py`, reading the images from the
  moto S3 through a moto server); labelers and reviewers answer through its API, with the same boxes,
  while the state machine waits. Its URL is the only value the harness sets (where the server runs).
* Feature Store runtime: `FakeFeatureStore` (requests validated against botocore's model); its
  recorded PutRecord calls become offline-store parquet files where Feature Store would write them.
* SageMaker Pipelines: `tests/e2e/pipeline.py` runs the deployed definition with the step code.
* Greengrass v2 and IoT jobs: `botocore.stub.Stubber`; the device's IPC: `FakeGreengrass`; the
  device's uploads go to a moto server on 127.0.0.1 through the component's own signed PUT.
* The edge workflow goes through config.yaml's stages (pilot, then production); their heartbeat check
  and health gate read the device metrics from `StageMetrics` (each stage's device reports the version
  its group was deployed, with a healthy line's figures): the workflow runs before the device does
  here, so these are not the device's own (tests/edge_deployment/test_stages.py judges those).

Every name comes from the owner's synthesized stack and from each reader's own configuration, so
a name computed differently by two sides breaks the loop with a `LoopBroken` naming the stage.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import http.server
import json
import math
import os
import random
import re
import shutil
import subprocess
import tarfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import xform_name
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber
from moto import mock_aws
from moto.events.models import EventPattern

from edge_deployment.runtime.config import ENVIRONMENT_VARIABLE as EDGE_CONFIG_VARIABLE
from edge_deployment.runtime.config import EdgeDeploymentConfig
from edge_deployment.runtime_bundle import HANDLER_MODULE
from labeling.functions import HANDLERS
from labeling.runtime.config import LabelingConfig
from labeling.runtime.ground_truth import load_task_ui
from shared.contracts import Annotation, LabelRecord
from shared.names import RAW_IMAGE_PREFIX
from shared.synthetic import Sample, write_dataset
from tests.e2e.pipeline import PipelineRun, Trainer
from tests.e2e.templates import ACCOUNT, PARTITION, REGION, Apps
from tests.edge_deployment.workflow_harness import WORKFLOW_HANDLERS
from tests.helpers import asl
from tests.helpers.lambda_context import LambdaContext
from tests.helpers.state_machine import MotoStateMachine, function_arn, lambda_handlers
from tests.labeling.fakes import FakeFeatureStore, FakeGroundTruth
from tests.labeling.workflow_harness import Workflow

THING = "line-1-camera-1"
PACKAGE_STATE_CHANGE = "SageMaker Model Package State Change"
INFERENCE_VERSION_RESOURCE = "Custom::GreengrassComponentVersion"
LABELING_HANDLERS = tuple(h for h in HANDLERS if h != "seed_resource")  # every backend's round functions
EDGE_HANDLERS = ("prepare_model", *WORKFLOW_HANDLERS)  # every function of the edge workflow
PILOT_THING = "line-1-pilot-camera"


class StageMetrics:
    """CloudWatch GetMetricData for the stages' gates (requests checked against botocore): each device sends
    heartbeats with the version the last deployment carries and a healthy line's figures (the health rule on
    real device telemetry is tested in tests/edge_deployment/test_stages.py)."""

    HEALTHY = {"Frames": 600.0, "DefectFrames": 60.0, "FramesFailedTotal": 0.0, "LatencyMs": 45.0}

    def __init__(self, deployed_version: Callable[[], str]) -> None:
        import botocore.session
        from botocore.validate import validate_parameters

        self._deployed_version = deployed_version
        self._validate = functools.partial(
            validate_parameters,
            shape=botocore.session.get_session()
            .get_service_model("cloudwatch")
            .operation_model("GetMetricData")
            .input_shape,
        )
        self.devices: list[str] = []

    def get_metric_data(self, **params: Any) -> dict[str, Any]:
        self._validate(params)
        results = []
        for query in params["MetricDataQueries"]:
            metric = query["MetricStat"]["Metric"]
            dimensions = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
            self.devices.append(dimensions["Device"])
            if metric["MetricName"] == "DeviceHeartbeats":
                value = 3.0 if dimensions["ModelVersion"] == self._deployed_version() else None
            elif metric["MetricName"] == "ExpectedEmptyShare":
                value = 0.9
            else:
                value = self.HEALTHY.get(metric["MetricName"])
            answer = [value] if value is not None else []
            # CloudWatch pairs every value with its period's time: here the window's last minute
            moments = [params["EndTime"] - timedelta(minutes=1)] * len(answer)
            results.append({"Id": query["Id"], "StatusCode": "Complete", "Values": answer, "Timestamps": moments})
        return {"MetricDataResults": results}


DESCRIBE_COMPONENT = "DescribeModelComponent"  # the SDK task, answered by the stubbed Greengrass client
EDGE_STAGE = "edge deployment workflow"
# A real run of the pipeline with these run parameters (any execution may override them): a tiny model.
TINY_TRAINING = {"Epochs": 2, "ImageSize": 96, "BatchSize": 16, "MinMap50to95": 0.0}


class LoopBroken(Exception):
    """The loop does not close; the message names the stage and what did not fit."""


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    try:
        yield
    except LoopBroken:
        raise
    except Exception as error:
        raise LoopBroken(f"{name}: {type(error).__name__}: {error}") from error


# --------------------------------------------------------------------------------------------------
# What each side computed (from the synthesized stacks)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wiring:
    """The names and settings each app's code ended up with; drift checks replace one of them."""

    apps: Apps
    labeling: LabelingConfig  # the labeling functions' LABELING_CONFIG
    pipeline: dict[str, Any]  # the training pipeline's definition as deployed
    edge: EdgeDeploymentConfig  # the edge workflow functions' EDGE_DEPLOYMENT_CONFIG
    inference_recipe: dict[str, Any]  # the inference component version's recipe (the device's configuration)
    archive_drops: tuple[str, ...] = ()  # files the training packaging would leave out of model.tar.gz


def wiring(apps: Apps) -> Wiring:
    from edge_deployment.runtime.components import inference_component_version, render_recipe_template

    workflow = apps.labeling_workflow
    handlers = {
        r["Properties"]["Handler"]
        for r in workflow.of_type("AWS::Lambda::Function").values()
        if r["Properties"]["Handler"].startswith("labeling.runtime.handlers.")
    }
    configs = {
        workflow.environment(f"labeling.runtime.handlers.{h}")["LABELING_CONFIG"]
        for h in LABELING_HANDLERS
        if f"labeling.runtime.handlers.{h}" in handlers
    }
    if len(configs) != 1:
        raise LoopBroken(f"the labeling functions run with {len(configs)} different configurations")
    (pipeline,) = apps.training_workflow.of_type("AWS::SageMaker::Pipeline").values()
    definition = json.loads(
        apps.training_workflow.render(pipeline["Properties"]["PipelineDefinition"])["PipelineDefinitionBody"]
    )
    edge = apps.edge_workflow
    edge_configs = {
        edge.environment(f"edge_deployment.runtime.handlers.{h}")[EDGE_CONFIG_VARIABLE] for h in EDGE_HANDLERS
    }
    if len(edge_configs) != 1:
        raise LoopBroken(f"the edge workflow functions run with {len(edge_configs)} different configurations")
    ((resource_id, resource),) = edge.of_type(INFERENCE_VERSION_RESOURCE).items()
    properties = edge.render(resource["Properties"])
    # What the custom resource's function computes at deploy time (edge_deployment.runtime.handlers).
    version = inference_component_version(
        artifact_hash=properties["ArtifactHash"], recipe_template=properties["RecipeTemplate"]
    )
    edge.attributes[f"{resource_id}.ComponentVersion"] = version
    return Wiring(
        apps=apps,
        labeling=LabelingConfig.from_json(configs.pop()),
        pipeline=definition,
        edge=EdgeDeploymentConfig.from_json(edge_configs.pop()),
        inference_recipe=render_recipe_template(properties["RecipeTemplate"], version),
    )


# --------------------------------------------------------------------------------------------------
# Doubles
# --------------------------------------------------------------------------------------------------


class FeatureGroupNotFound(Exception):
    pass


class LabelFeatureGroup(FakeFeatureStore):
    """The online store of the feature group the data stack created: another name is not found."""

    def _check(self, name: str) -> None:
        if name != self.feature_group:
            raise FeatureGroupNotFound(
                f"feature group {name!r} does not exist (the data stack created {self.feature_group!r})"
            )

    def batch_get_record(self, **params: Any) -> dict[str, Any]:
        for identifier in params.get("Identifiers", []):
            self._check(identifier.get("FeatureGroupName", ""))
        return super().batch_get_record(**params)

    def put_record(self, **params: Any) -> dict[str, Any]:
        self._check(params.get("FeatureGroupName", ""))
        return super().put_record(**params)


@dataclass
class FakeGreengrass:
    """The device's Greengrass IPC (inspector.greengrass.Greengrass): configurations of the deployed components."""

    configurations: dict[str | None, dict[str, Any]]
    published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def publish(self, topic: str, payload: Mapping[str, Any]) -> None:
        self.published.append((topic, json.loads(json.dumps(dict(payload)))))

    def configuration(self, component: str | None = None) -> dict[str, Any]:
        from edge_deployment.components.inference.inspector.greengrass import IpcError

        if component not in self.configurations:
            raise IpcError(f"component {component} is not deployed")
        return json.loads(json.dumps(self.configurations[component]))

    def watch_configuration(self, component: str | None, on_change: Callable[[], None]) -> None:
        pass


# --------------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------------


@dataclass
class LoopResult:
    raw_images: dict[str, Sample] = field(default_factory=dict)  # image URI -> the synthetic sample
    first_round: dict[str, Any] = field(default_factory=dict)
    label_records: list[LabelRecord] = field(default_factory=list)
    offline_store_files: list[str] = field(default_factory=list)
    pipeline_steps: list[str] = field(default_factory=list)
    dataset: dict[str, Any] = field(default_factory=dict)
    registered_package: dict[str, Any] = field(default_factory=dict)  # as the pipeline registered it
    model_package: dict[str, Any] = field(default_factory=dict)  # once approved
    edge_input: dict[str, Any] = field(default_factory=dict)
    edge_output: dict[str, Any] = field(default_factory=dict)
    deployment_request: dict[str, Any] = field(default_factory=dict)  # the last stage's (the device's group)
    deployment_requests: list[dict[str, Any]] = field(default_factory=list)  # every stage's, in order
    stage_metrics_asked: list[str] = field(default_factory=list)  # devices the health gates asked about
    model_recipe: dict[str, Any] = field(default_factory=dict)
    model_files: list[str] = field(default_factory=list)
    results: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    frames: int = 0
    uploads: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> its S3 metadata
    second_round_images: list[str] = field(default_factory=list)
    second_round: dict[str, Any] = field(default_factory=dict)  # the second round's output (pre-labels, labels)
    trained_model: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


class S3Endpoint:
    """An S3 endpoint on 127.0.0.1 for the device's own signed PUTs, stored in moto's S3.

    The device signs with SigV4 for its region and sends `If-None-Match: *`; the request is checked
    for both and handed to moto's PutObject (a 412 when the key exists, a 404 NoSuchBucket ...).
    """

    def __init__(self, s3: Any) -> None:
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                status, body = endpoint.put(
                    self.path, dict(self.headers.items()), self.rfile.read(int(self.headers["Content-Length"]))
                )
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.s3 = s3
        self.requests: list[dict[str, str]] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def put(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        from urllib.parse import unquote

        self.requests.append(headers)
        bucket, _, key = unquote(path).lstrip("/").partition("/")
        authorization = headers.get("Authorization", "")
        if not re.match(rf"AWS4-HMAC-SHA256 Credential=[^/]+/\d{{8}}/{REGION}/s3/aws4_request", authorization):
            return 403, f"<Error><Code>SignatureDoesNotMatch</Code><Message>{authorization}</Message></Error>".encode()
        if headers.get("If-None-Match") != "*":
            return 400, b"<Error><Code>InvalidRequest</Code><Message>raw images are never overwritten</Message></Error>"
        try:
            self.s3.head_object(Bucket=bucket, Key=key)
            return 412, b"<Error><Code>PreconditionFailed</Code></Error>"
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code == "NoSuchBucket":
                return 404, f"<Error><Code>NoSuchBucket</Code><BucketName>{bucket}</BucketName></Error>".encode()
            if code not in ("404", "NoSuchKey", "NotFound"):
                return 500, f"<Error><Code>{code}</Code></Error>".encode()
        metadata = {
            k.lower().removeprefix("x-amz-meta-"): v for k, v in headers.items() if k.lower().startswith("x-amz-meta-")
        }
        try:
            self.s3.put_object(
                Bucket=bucket, Key=key, Body=body, ContentType=headers.get("Content-Type", ""), Metadata=metadata
            )
        except ClientError as error:
            code = error.response["Error"]["Code"]
            return (
                404 if code == "NoSuchBucket" else 400,
                f"<Error><Code>{code}</Code><BucketName>{bucket}</BucketName></Error>".encode(),
            )
        return 200, b""

    def __enter__(self) -> S3Endpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def whole_pixels(sample: Sample) -> list[tuple[int, int, int, int, int]]:
    """A worker's boxes for a sample: (class, left, top, width, height) in whole pixels around each defect."""
    boxes = []
    for box in sample.boxes:
        left, top = math.floor(box.x1), math.floor(box.y1)
        right, bottom = min(sample.width, math.ceil(box.x2)), min(sample.height, math.ceil(box.y2))
        boxes.append((box.class_id, left, top, right - left, bottom - top))
    return boxes


@dataclass
class Loop:
    wiring: Wiring
    work: Path
    trainer: Trainer | None = None  # None: the pipeline's own training command (a real training)
    images: int = 60
    frames: int = 12
    seed: int = 11
    studio: Any = None  # a running Label Studio server (labeling/local/server.py) for that backend

    def __post_init__(self) -> None:
        self.result = LoopResult()
        self.apps = self.wiring.apps

    # -- set-up: what the stacks would create ----------------------------------------------------------
    def _create_resources(self) -> None:
        for template in vars(self.apps).values():
            for logical_id in template.of_type("AWS::S3::Bucket"):
                self.s3.create_bucket(
                    Bucket=template.physical_name(logical_id),
                    CreateBucketConfiguration={"LocationConstraint": REGION},
                )
        group = self.apps.labeling_data.render(
            self.apps.labeling_data.one("AWS::SageMaker::FeatureGroup")["Properties"]
        )
        self.feature_group = group["FeatureGroupName"]
        self.sagemaker.create_feature_group(**group)
        package_group = self.apps.training_registry.render(
            self.apps.training_registry.one("AWS::SageMaker::ModelPackageGroup")["Properties"]
        )
        self.sagemaker.create_model_package_group(**package_group)
        self.data_bucket = self.apps.labeling_data.physical_name(
            next(
                lid
                for lid, r in self.apps.labeling_data.of_type("AWS::S3::Bucket").items()
                if "BucketName" in r["Properties"]
            )
        )

    # -- 1. labeling ---------------------------------------------------------------------------------
    def _raw_images(self) -> None:
        """Cameras drop tags under the raw-image prefix (the shared contract, not labeling's setting)."""
        for sample in write_dataset(self.work / "raw", self.images, seed=self.seed):
            key = f"{RAW_IMAGE_PREFIX}line-1/{sample.path.name}"
            self.s3.upload_file(str(sample.path), self.data_bucket, key)
            self.result.raw_images[f"s3://{self.data_bucket}/{key}"] = sample

    def _labeling_round(self, name: str) -> dict[str, Any]:
        # a Label Studio round makes a few hundred calls to a real server: minutes on a busy machine
        described = self.workflow.wait(self.workflow.start(name), timeout=900)
        if described["status"] != "SUCCEEDED":
            raise LoopBroken(
                f"labeling round {name}: {described['status']}: {described.get('cause', described.get('error'))}"
            )
        return dict(json.loads(described["output"]))

    def _offline_store(self) -> None:
        """Feature Store's offline store receives every written record: parquet under the resolved URI."""
        from training.steps.dataset import write_offline_store

        records = [LabelRecord.from_values(values) for values in self.featurestore.puts]
        self.result.label_records = records
        described = self.sagemaker.describe_feature_group(FeatureGroupName=self.feature_group)
        uri = described["OfflineStoreConfig"]["S3StorageConfig"]["ResolvedOutputS3Uri"]
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        folder = self.work / "offline-store"
        moment = datetime.now(UTC)
        path = write_offline_store(
            records, folder, written_at=moment, file_name=f"{moment:%Y%m%dT%H%M%SZ}_{uuid.uuid4().hex[:16]}.parquet"
        )
        key = f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}"
        self.s3.upload_file(str(path), bucket, key)
        self.result.offline_store_files.append(f"s3://{bucket}/{key}")

    # -- 2. training ---------------------------------------------------------------------------------
    def _drop_from_archive(self, step: str, run: PipelineRun) -> None:
        if not step.startswith("Evaluate") or not self.wiring.archive_drops:
            return
        uri = run.outputs[step]["ProcessingOutputConfig.Outputs['package'].S3Output.S3Uri"] + "/model.tar.gz"
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        original, rebuilt = self.work / "original.tar.gz", self.work / "rebuilt.tar.gz"
        self.s3.download_file(bucket, key, str(original))
        with tarfile.open(original, "r:gz") as source, tarfile.open(rebuilt, "w:gz") as target:
            for member in source.getmembers():
                if member.name.lstrip("./") not in self.wiring.archive_drops:
                    target.addfile(member, source.extractfile(member))
        self.s3.upload_file(str(rebuilt), bucket, key)

    def _training(self) -> str:
        run = PipelineRun(
            definition=self.wiring.pipeline,
            template=self.apps.training_workflow,
            s3=self.s3,
            sagemaker=self.sagemaker,
            work=self.work / "pipeline",
            parameters={**TINY_TRAINING, "MinImages": self.images // 2},
            after_step=self._drop_from_archive,
            trainer=self.trainer,
        )
        try:
            run.run()
        finally:
            self.result.pipeline_steps = run.steps_run
        if len(run.registered) != 1:
            raise LoopBroken(f"training pipeline: registered {len(run.registered)} model packages, expected one")
        export = next(name for name in run.property_files if "DatasetProperties" in run.property_files[name])
        self.result.dataset = json.loads(run.property_files[export]["DatasetProperties"].read_text(encoding="utf-8"))
        trained = next(p for p in (self.work / "pipeline").glob("Train*/opt/ml/model") if p.is_dir())
        keep = self.work / "trained-model"
        shutil.copytree(trained, keep)
        self.result.trained_model = keep
        return run.registered[0]

    # -- 3. approval and edge deployment -----------------------------------------------------------------
    def _approval_event(self, package_arn: str) -> dict[str, Any]:
        """A person approves the package; EventBridge matches the edge rule and builds the workflow's input."""
        # As registered (moto's UpdateModelPackage drops the customer metadata; SageMaker keeps it).
        self.result.registered_package = self.sagemaker.describe_model_package(ModelPackageName=package_arn)
        self.sagemaker.update_model_package(ModelPackageArn=package_arn, ModelApprovalStatus="Approved")
        package = self.sagemaker.describe_model_package(ModelPackageName=package_arn)
        self.result.model_package = package
        event: dict[str, Any] = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": PACKAGE_STATE_CHANGE,
            "source": "aws.sagemaker",
            "account": ACCOUNT,
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": REGION,
            "resources": [package_arn],
            "detail": {
                "ModelPackageGroupName": package["ModelPackageGroupName"],
                "ModelPackageVersion": package["ModelPackageVersion"],
                "ModelPackageArn": package_arn,
                "ModelApprovalStatus": package["ModelApprovalStatus"],
                "ModelPackageStatus": package["ModelPackageStatus"],
            },
        }
        # The rule that listens to the registry (the other one, of the drift alarms, starts retraining).
        (rule,) = [
            r["Properties"]
            for r in self.apps.edge_workflow.of_type("AWS::Events::Rule").values()
            if r["Properties"]["EventPattern"].get("source") == ["aws.sagemaker"]
        ]
        pattern = self.apps.edge_workflow.render(rule["EventPattern"])
        # moto's TestEventPattern answers nothing; its rule matcher (what PutEvents uses) decides instead.
        if not EventPattern.load(json.dumps(pattern)).matches_event(event):
            raise LoopBroken(f"approval: the event of {package_arn} does not match the edge rule's pattern {pattern}")
        (target,) = rule["Targets"]
        transformer = target["InputTransformer"]
        text = transformer["InputTemplate"]
        for name, path in transformer["InputPathsMap"].items():
            value: Any = event
            for part in path.removeprefix("$.").split("."):
                value = value[part]
            text = text.replace(f"<{name}>", json.dumps(value))
        return dict(json.loads(text))

    def _edge_workflow(self, state_input: dict[str, Any]) -> dict[str, Any]:
        from edge_deployment.runtime import handlers
        from edge_deployment.runtime.aws import component_arn
        from edge_deployment.runtime.components import model_component_version

        edge = self.apps.edge_workflow
        functions = lambda_handlers(edge.body, HANDLER_MODULE)
        substitutions = {f"{lid}.Arn": function_arn(handler) for lid, handler in functions.items()}
        (machine,) = asl.state_machines(edge.body, substitutions | dict(edge.attributes)).values()
        definition = copy.deepcopy(machine.definition)
        for _, state in asl.iter_states(definition):
            if state["Type"] == "Wait":
                state.pop("SecondsPath", None)
                state["Seconds"] = 0  # the rollout's IoT job answers at once here, and no stage soaks
            if state.get("Resource", "").endswith(":aws-sdk:greengrassv2:describeComponent"):
                # moto has no Greengrass v2: the SDK task's call goes to the stubbed client below
                state["Resource"] = function_arn(DESCRIBE_COMPONENT)

        greengrass = boto3.client("greengrassv2", region_name=REGION)
        iot = boto3.client("iot", region_name=REGION)
        edge_config = self.wiring.edge
        component = edge_config.model_component_name
        version = model_component_version(int(self.result.model_package["ModelPackageVersion"]))
        arn = component_arn(partition=PARTITION, region=REGION, account=ACCOUNT, name=component, version=version)
        now = datetime.now(UTC)
        sent: dict[str, dict[str, Any]] = {}
        deployments: list[dict[str, Any]] = []
        for operation in ("CreateComponentVersion", "CreateDeployment"):
            greengrass.meta.events.register(
                f"provide-client-params.greengrassv2.{operation}",
                lambda params, _op=operation, **_: sent.__setitem__(_op, dict(params)),
            )
        greengrass.meta.events.register(
            "provide-client-params.greengrassv2.CreateDeployment", lambda params, **_: deployments.append(dict(params))
        )
        gg, jobs = Stubber(greengrass), Stubber(iot)
        gg.add_client_error("describe_component", "ResourceNotFoundException", http_status_code=404)
        gg.add_response(
            "create_component_version",
            {
                "arn": arn,
                "componentName": component,
                "componentVersion": version,
                "creationTimestamp": now,
                "status": {"componentState": "REQUESTED", "message": "NONE", "errors": {}},
            },
            {"inlineRecipe": ANY, "clientToken": ANY},
        )
        gg.add_response(
            "describe_component",
            {
                "arn": arn,
                "componentName": component,
                "componentVersion": version,
                "creationTimestamp": now,
                "publisher": "edge deployment workflow",
                "status": {"componentState": "DEPLOYABLE", "message": "NONE", "errors": {}},
            },
            {"arn": arn},
        )
        # the stages of config.yaml in order (pilot, production): each group's devices, no deployment before
        sfn = boto3.client("stepfunctions", region_name=REGION)
        runs = Stubber(sfn)
        stages = [(stage.name, stage.thing_groups[0]) for stage in edge_config.stages]
        members = {
            group: [PILOT_THING if index < len(stages) - 1 else THING] for index, (_, group) in enumerate(stages)
        }
        for index, (_, group) in enumerate(stages):
            group_arn = f"arn:{PARTITION}:iot:{REGION}:{ACCOUNT}:thinggroup/{group}"
            jobs.add_response(
                "describe_thing_group", {"thingGroupName": group, "thingGroupArn": group_arn}, {"thingGroupName": group}
            )
            jobs.add_response(
                "list_things_in_thing_group", {"things": members[group]}, {"thingGroupName": group, "maxResults": 1}
            )
            gg.add_response(
                "list_deployments", {"deployments": []}, {"targetArn": group_arn, "historyFilter": "LATEST_ONLY"}
            )
            gg.add_response("list_deployments", {"deployments": []})
            gg.add_response(
                "create_deployment", {"deploymentId": f"e2e-deployment-{index}", "iotJobId": f"e2e-job-{index}"}
            )
            jobs.add_response(
                "describe_job",
                {
                    "job": {
                        "jobId": f"e2e-job-{index}",
                        "status": "COMPLETED",
                        "jobProcessDetails": {"numberOfSucceededThings": 1},
                    }
                },
                {"jobId": f"e2e-job-{index}"},
            )
            # the only execution of the workflow: no earlier run that could still replace its deployment
            runs.add_response("list_executions", {"executions": []})
            for _ in ("heartbeats", "health"):
                jobs.add_response(
                    "list_things_in_thing_group",
                    {"things": members[group]},
                    {"thingGroupName": group, "maxResults": 250},
                )
        metrics = StageMetrics(lambda: deployments[-1]["components"][component]["componentVersion"])
        clients = {
            "greengrassv2": greengrass,
            "iot": iot,
            "s3": self.s3,
            "sagemaker": self.sagemaker,
            "stepfunctions": sfn,
            "cloudwatch": metrics,
        }

        def call_sdk(service: str, action: str, parameters: dict[str, Any]) -> Any:
            method = getattr(clients[service], xform_name(action))
            response = method(**{k[:1].lower() + k[1:]: v for k, v in parameters.items()})
            response.pop("ResponseMetadata", None)
            return _pascal(json.loads(json.dumps(response, default=str)))

        def dispatch(handler: str, event: dict[str, Any]) -> Any:
            if handler == DESCRIBE_COMPONENT:
                return call_sdk("greengrassv2", "DescribeComponent", event)
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv(EDGE_CONFIG_VARIABLE, edge_config.to_json())
                patch.setattr(handlers, "client", lambda service, region=None: clients[service])
                return getattr(handlers, handler)(event, LambdaContext(handler, aws_request_id="e2e-request"))

        workflow = MotoStateMachine(
            name="tag-inspect-edge-deployment",
            definition=definition,
            dispatch=dispatch,
            topic=f"{self.wiring.labeling.project_prefix}-edge-deployment-notifications",
            poll_seconds=0.05,
        )
        with gg, jobs, runs, pytest.MonkeyPatch.context() as patch:
            workflow.install(patch)
            described = workflow.wait(workflow.start(state_input, "e2e-edge"), timeout=300)
        if described["status"] != "SUCCEEDED":
            raise LoopBroken(f"{EDGE_STAGE}: {described.get('error')}: {_cause(described.get('cause', ''))}")
        output: dict[str, Any] = json.loads(described["output"])
        self.result.deployment_request = sent.get("CreateDeployment", {})
        self.result.deployment_requests = deployments
        self.result.stage_metrics_asked = metrics.devices
        self.result.model_recipe = json.loads(sent["CreateComponentVersion"]["inlineRecipe"])
        return output

    # -- 4. the device --------------------------------------------------------------------------------
    def _device(self, endpoint: str) -> None:
        from edge_deployment.components.inference.inspector.feedback import Credentials, StaticCredentials
        from edge_deployment.components.inference.inspector.service import DeviceContext, create_service

        deployed = self.result.deployment_request["components"]
        model_recipe, inference_recipe = self.result.model_recipe, self.wiring.inference_recipe
        for recipe in (model_recipe, inference_recipe):
            if deployed.get(recipe["ComponentName"], {}).get("componentVersion") != recipe["ComponentVersion"]:
                raise LoopBroken(
                    f"device: the deployment does not carry {recipe['ComponentName']} "
                    f"{recipe['ComponentVersion']} ({deployed})"
                )
        root = self.work / "greengrass"
        unarchived = root / "packages" / "artifacts-unarchived"

        def decompressed(recipe: dict[str, Any]) -> Path:
            return unarchived / recipe["ComponentName"] / recipe["ComponentVersion"]

        (manifest,) = [m for m in model_recipe["Manifests"] if m["Platform"]["architecture"] == "amd64"]
        for artifact in manifest["Artifacts"]:  # what the nucleus does with the model component's artifact
            bucket, _, key = artifact["Uri"].removeprefix("s3://").partition("/")
            local = root / "packages" / "artifacts" / Path(key).name
            local.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(bucket, key, str(local))
            if artifact.get("Unarchive") == "ZIP":
                with zipfile.ZipFile(local) as archive:
                    archive.extractall(decompressed(model_recipe) / Path(key).name.removesuffix(".zip"))
        self.result.model_files = sorted(
            p.relative_to(decompressed(model_recipe)).as_posix()
            for p in decompressed(model_recipe).rglob("*")
            if p.is_file()
        )
        lifecycle = {k.lower(): v for k, v in manifest["Lifecycle"].items()}
        if "install" in lifecycle:  # the model component's own check of its unpacked files
            script = lifecycle["install"]["Script"].replace(
                "{artifacts:decompressedPath}", str(decompressed(model_recipe))
            )
            checked = subprocess.run(["sh", "-c", script], check=False, capture_output=True, text=True)
            if checked.returncode:
                raise LoopBroken(
                    f"device: the model component's install script failed ({checked.returncode}): {script}"
                )

        (inference_manifest,) = [m for m in inference_recipe["Manifests"] if m["Platform"]["architecture"] == "amd64"]
        work_dir = root / "work" / inference_recipe["ComponentName"]
        work_dir.mkdir(parents=True)
        placeholders = {
            "{artifacts:decompressedPath}": str(decompressed(inference_recipe)),
            "{work:path}": str(work_dir),
        }
        environ = {"AWS_IOT_THING_NAME": THING, "AWS_REGION": REGION}
        for name, value in inference_manifest["Lifecycle"]["Setenv"].items():
            environ[name] = functools.reduce(lambda text, item: text.replace(*item), placeholders.items(), value)
        fake = FakeGreengrass(
            {
                None: inference_recipe["ComponentConfiguration"]["DefaultConfiguration"],
                model_recipe["ComponentName"]: model_recipe["ComponentConfiguration"]["DefaultConfiguration"],
            }
        )
        context = dataclasses.replace(
            DeviceContext.from_environment(fake, environ),
            credentials=StaticCredentials(Credentials("testing", "testing")),
            s3_endpoint=endpoint,
        )
        service = create_service(context, rng=random.Random(0))
        frames = write_dataset(self.work / "fresh-frames", self.frames, seed=self.seed + 1000)
        service.config.frames_directory.mkdir(parents=True, exist_ok=True)
        settled = time.time() - 5  # the camera finished writing them a while ago
        for sample in frames:
            target = service.config.frames_directory / sample.path.name
            shutil.copy(sample.path, target)
            os.utime(target, (settled, settled))
        service.models.refresh(force=True)
        if service.models.detector is None:
            raise LoopBroken(f"device: no model to serve: {service.models.error}")
        self.result.frames = service.poll_frames()
        self.result.results = list(fake.published)
        if service.uploader is None:
            raise LoopBroken("device: uploads are disabled (no uploadBucket in the component's configuration)")
        if not service.uploader.drain():
            raise LoopBroken(
                f"device: uploads failed, {service.queue.pending if service.queue else '?'} frame(s) stay queued: "
                f"{service.uploader.last_error}"
            )

    def _uploads(self) -> None:
        config = self.wiring.inference_recipe["ComponentConfiguration"]["DefaultConfiguration"]
        keys = [payload["upload_key"] for _, payload in self.result.results if "upload_key" in payload]
        for key in keys:
            head = self.s3.head_object(Bucket=config["uploadBucket"], Key=key)
            self.result.uploads[key] = dict(head["Metadata"])

    def _second_round(self) -> None:
        requests_before = len(self.ground_truth.requests)
        output = self._labeling_round("round-2")
        config = self.wiring.inference_recipe["ComponentConfiguration"]["DefaultConfiguration"]
        uploaded = {f"s3://{config['uploadBucket']}/{key}" for key in self.result.uploads}
        self.result.second_round = output
        if self.wiring.labeling.backend == "label_studio":
            self._second_round_tasks(output, uploaded)
            return
        if len(self.ground_truth.requests) == requests_before:
            raise LoopBroken(
                f"next labeling round: found no image to label ({output.get('find')}), but the device uploaded "
                f"{len(uploaded)} frame(s): {sorted(uploaded)[:3]}"
            )
        request = self.ground_truth.requests[requests_before]
        bucket, _, key = (
            request["InputConfig"]["DataSource"]["S3DataSource"]["ManifestS3Uri"].removeprefix("s3://").partition("/")
        )
        lines = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
        self.result.second_round_images = [json.loads(line)["source-ref"] for line in lines if line.strip()]
        found = set(self.result.second_round_images)
        if found != uploaded:
            raise LoopBroken(
                f"next labeling round: labels {sorted(found - uploaded)[:3]} that the device did not upload "
                f"and misses {sorted(uploaded - found)[:3]}"
            )

    def _second_round_tasks(self, output: Mapping[str, Any], uploaded: set[str]) -> None:
        """Label Studio: the round's tasks are exactly the device's frames."""
        from labeling.runtime.label_studio import boxes_tasks_key

        if "labels" not in output:
            raise LoopBroken(
                f"next labeling round: found no image to label ({output.get('find')}), but the device uploaded "
                f"{len(uploaded)} frame(s): {sorted(uploaded)[:3]}"
            )
        key = boxes_tasks_key(f"{self.wiring.labeling.jobs_prefix}{output['round']}/")
        rows = self.s3.get_object(Bucket=self.data_bucket, Key=key)["Body"].read().decode().splitlines()
        self.result.second_round_images = [json.loads(row)["image"] for row in rows if row.strip()]
        found = set(self.result.second_round_images)
        if found != uploaded:
            raise LoopBroken(
                f"next labeling round: Label Studio tasks for {sorted(found - uploaded)[:3]} that the device did not "
                f"upload, none for {sorted(uploaded - found)[:3]}"
            )

    def _label_studio_people(self, truth: Mapping[str, list[tuple[int, int, int, int, int]]]) -> Callable[..., None]:
        """Labelers draw the true boxes and reviewers approve them, while the state machine waits."""
        from labeling.runtime import label_studio as ls
        from labeling.runtime.label_studio_api import LabelStudioClient

        client = LabelStudioClient(self.studio.url, self.studio.token)
        names = self.wiring.labeling.class_names
        approve = load_task_ui(names).approve

        def answer(handler: str, event: dict[str, Any]) -> None:
            if handler != "label_studio_progress":
                return
            for listed in client.tasks(int(event["project"]), filters=[ls.data_filter("round", event["run"]["id"])]):
                if listed.total_annotations:
                    continue
                width, height = int(listed.data["width"]), int(listed.data["height"])
                boxes = [
                    Annotation(c, left, top, left + w, top + h)
                    for c, left, top, w, h in truth.get(listed.data["image"], [])
                ]
                result = ls.to_regions(boxes, width=width, height=height, class_names=names)
                if "boxes_task" in listed.data:
                    verdict = {"from_name": ls.VERDICT, "to_name": ls.IMAGE, "type": "choices"}
                    result.append({**verdict, "value": {"choices": [approve]}})
                client.create_annotation(listed.id, result=result)

        return answer

    # -- all of it --------------------------------------------------------------------------------------
    def run(self) -> LoopResult:
        clock = time.monotonic()

        def lap(name: str) -> None:
            nonlocal clock
            self.result.seconds[name] = round(time.monotonic() - clock, 1)
            clock = time.monotonic()

        config: Any = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
        with mock_aws(config=config), pytest.MonkeyPatch.context() as patch:
            self.s3 = boto3.client("s3", region_name=REGION)
            self.sagemaker = boto3.client("sagemaker", region_name=REGION)
            with stage("resources"):
                self._create_resources()
            ui = load_task_ui(self.wiring.labeling.class_names)
            truth: dict[str, list[tuple[int, int, int, int, int]]] = {}
            self.featurestore = LabelFeatureGroup(self.feature_group)
            self.ground_truth = FakeGroundTruth(
                s3=self.s3,
                class_names=self.wiring.labeling.class_names,
                approve=ui.approve,
                reject=ui.reject,
                boxes=lambda uri: truth.get(uri, []),  # the device's frames: the worker finds no defect
            )
            self.workflow = Workflow(
                template=self.apps.labeling_workflow.body,
                s3=self.s3,
                featurestore=self.featurestore,
                ground_truth=self.ground_truth,
            )
            labeling = self.wiring.labeling
            clients: dict[str, Any] = {}
            if labeling.backend == "label_studio":
                if self.studio is None:
                    raise LoopBroken("the Label Studio backend needs a running server (Loop.studio)")
                secrets = boto3.client("secretsmanager", region_name=REGION)
                secrets.create_secret(Name=labeling.label_studio_token_secret, SecretString=self.studio.token)
                clients["secretsmanager"] = secrets
                labeling = dataclasses.replace(labeling, label_studio_url=self.studio.url)
                self.workflow.before_call = self._label_studio_people(truth)
            self.workflow.install(patch, labeling.to_json(), **clients)
            with stage("labeling"):
                self._raw_images()
                truth.update({uri: whole_pixels(sample) for uri, sample in self.result.raw_images.items()})
                self.result.first_round = self._labeling_round("round-1")
                labeled = self.result.first_round.get("labels", {}).get("total", 0)
                if labeled != len(self.result.raw_images):
                    raise LoopBroken(
                        f"labeling: round-1 labeled {labeled} of the {len(self.result.raw_images)} raw images under "
                        f"{RAW_IMAGE_PREFIX} (listing: {self.result.first_round.get('find')})"
                    )
                self._offline_store()
            lap("labeling")
            with stage("training pipeline"):
                package_arn = self._training()
            lap("training")
            with stage("approval"):
                state_input = self._approval_event(package_arn)
                self.result.edge_input = state_input
            with stage(EDGE_STAGE):
                self.result.edge_output = self._edge_workflow(state_input)
            lap("edge deployment")
            patch.setenv("NO_PROXY", "127.0.0.1")
            patch.setenv("no_proxy", "127.0.0.1")
            with S3Endpoint(self.s3) as endpoint, stage("device"):
                self._device(endpoint.url)
                self._uploads()
            lap("device")
            with stage("next labeling round"):
                self._second_round()
            lap("second round")
        return self.result


def _cause(cause: str) -> str:
    """A failed execution's cause: a Lambda error's message, or the cause as the workflow wrote it."""
    try:
        return str(json.loads(cause)["errorMessage"])
    except (ValueError, TypeError, KeyError):
        return cause


def _pascal(value: Any) -> Any:
    """An AWS SDK response as Step Functions' aws-sdk integration returns it (member names capitalized)."""
    if isinstance(value, list):
        return [_pascal(item) for item in value]
    if isinstance(value, dict):
        return {k[:1].upper() + k[1:]: _pascal(v) for k, v in value.items()}
    return value
