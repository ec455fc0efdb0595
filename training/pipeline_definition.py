"""The SageMaker pipeline definition, generated as plain JSON at synth time (no SageMaker SDK).

    ExportDataset -> PrepareDataset -> UseSpotInstances? --yes--> TrainOnSpot     -> ... (same chain)
                                                        --no---> TrainOnDemand -> EvaluateOnDemand
                       -> RegressionBaselineOnDemand -> QualityGateOnDemand --pass--> RegisterModelOnDemand
                                                                            --fail--> QualityGateFailedOnDemand

Why two chains: `CreateTrainingJob` rejects `MaxWaitTimeInSeconds` unless managed spot training is on,
and a pipeline cannot join the two branches of a condition again, so spot on/off (a run parameter)
selects one of two otherwise identical chains, built by the same function.

Caching: PrepareDataset and Train* are cached (their inputs are content-addressed: a dataset version
and the step code's asset hash), so a run over unchanged labels with unchanged parameters reuses the
prepared dataset and the trained model. ExportDataset (reads live labels), Evaluate* (writes this
run's archive), the baseline lookup (reads the live registry) and registration are never cached.

Values may be CDK tokens (ARNs, bucket names, the asset URL): the stack renders the dict with
`Stack.to_json_string`, so they resolve inside the JSON string at deploy time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.config import TrainingSettings
from training.steps.train import METRIC_DEFINITIONS

DEFINITION_VERSION = "2020-12-01"

# -- parameters ---------------------------------------------------------------------------------------
MODEL_SIZE = "ModelSize"
EPOCHS = "Epochs"
IMAGE_SIZE = "ImageSize"
BATCH_SIZE = "BatchSize"
TRAINING_INSTANCE_TYPE = "TrainingInstanceType"
PROCESSING_INSTANCE_TYPE = "ProcessingInstanceType"
USE_SPOT = "UseSpotInstances"
PRETRAINED_WEIGHTS = "PretrainedWeightsS3Uri"
MIN_IMAGES = "MinImages"
MAP_THRESHOLD = "MinMap50to95"
REGRESSION_MARGIN = "RegressionMargin"
CONFIDENCE_THRESHOLD = "ConfidenceThreshold"
IOU_THRESHOLD = "IouThreshold"
APPROVAL_STATUS = "ModelApprovalStatus"

# -- steps --------------------------------------------------------------------------------------------
EXPORT = "ExportDataset"
PREPARE = "PrepareDataset"
CAPACITY = "ChooseCapacity"
CAPACITIES = {"Spot": True, "OnDemand": False}  # suffix of each chain's step names -> managed spot on/off
DATASET_PROPERTIES = "DatasetProperties"
EVALUATION_REPORT = "EvaluationReport"
BASELINE_OUTPUTS = {
    "regression_floor": "Float",
    "baseline_metric": "Float",
    "baseline_package_arn": "String",
    "has_baseline": "Boolean",
}

# -- containers ---------------------------------------------------------------------------------------
PROCESSING_ROOT = "/opt/ml/processing"
CODE_CHANNEL = "code"
DATASET_CHANNEL = "dataset"
CHECKPOINT_PATH = "/opt/ml/checkpoints"
# The step code arrives as the zip file CDK uploaded: unpack it and run `training/steps/run.sh` (it
# installs the pinned requirements, then runs the step). `$1` is the folder SageMaker put the zip in,
# the rest are the step's arguments. CreateProcessingJob and CreateTrainingJob refuse an entrypoint
# element over 256 characters, hence the two stages.
BOOTSTRAP = (
    "set -eu; "
    'a="$(find "$1" -maxdepth 1 -name "*.zip" -print -quit)"; '
    'test -n "$a" || { echo "no step code archive in $1" >&2; exit 1; }; '
    'shift; cd "$(mktemp -d)"; python3 -m zipfile -e "$a" .; '
    'exec bash training/steps/run.sh "$@"'
)
ENVIRONMENT = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false", "PYTHONUNBUFFERED": "1"}
PROCESSING_MAX_RUNTIME_SECONDS = 4 * 3600
MAX_WAIT_LIMIT_SECONDS = 2_419_200  # 28 days: the longest wait SageMaker accepts


@dataclass(frozen=True)
class PipelineResources:
    """The names and ARNs the definition points at (CDK tokens or literal strings)."""

    role_arn: str
    model_bucket: str
    model_key_arn: str
    code_uri: str  # s3:// URL of the zipped step code (a CDK asset)
    code_version: str  # the asset hash: content-addresses cached outputs by code version too
    feature_group: str
    model_package_group: str
    baseline_function_arn: str
    region: str
    training_image: str
    processing_image: str


# --------------------------------------------------------------------------------------------------
# Expressions of the pipeline definition language
# --------------------------------------------------------------------------------------------------


def get(path: str) -> dict[str, str]:
    return {"Get": path}


def parameter(name: str) -> dict[str, str]:
    return get(f"Parameters.{name}")


def join(values: Sequence[Any], on: str = "") -> dict[str, Any]:
    """`Std:Join`; also how a number or boolean becomes the string a job argument needs.

    Always one flat join: a nested join is inlined and adjacent literals merged, so the service
    never has to evaluate a join inside a join.
    """
    parts: list[Any] = []
    for index, value in enumerate(values):
        if index and on:
            parts.append(on)
        inner = value.get("Std:Join") if isinstance(value, dict) else None
        parts.extend(inner["Values"] if inner is not None and inner["On"] == "" else [value])
    flat: list[Any] = []
    for part in parts:
        if isinstance(part, str) and flat and isinstance(flat[-1], str):
            flat[-1] += part
        else:
            flat.append(part)
    return {"Std:Join": {"On": "", "Values": flat}}


def as_text(value: Any) -> dict[str, Any]:
    return join([value])


def json_get(step: str, property_file: str, path: str) -> dict[str, Any]:
    return {"Std:JsonGet": {"PropertyFile": get(f"Steps.{step}.PropertyFiles.{property_file}"), "Path": path}}


def execution_id() -> dict[str, str]:
    return get("Execution.PipelineExecutionId")


def processing_output_uri(step: str, output: str) -> dict[str, str]:
    return get(f"Steps.{step}.ProcessingOutputConfig.Outputs['{output}'].S3Output.S3Uri")


def s3_uri(bucket: str, *parts: Any) -> dict[str, Any]:
    return join([f"s3://{bucket}", *parts], on="/")


def retry_policies() -> list[dict[str, Any]]:
    """Transient failures are retried with exponential backoff; a job's own error is not."""
    return [
        {
            "ExceptionType": ["Step.SERVICE_FAULT", "Step.THROTTLING"],
            "IntervalSeconds": 10,
            "BackoffRate": 2.0,
            "MaxAttempts": 5,
        },
        {
            "ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR", "SageMaker.CAPACITY_ERROR", "SageMaker.RESOURCE_LIMIT"],
            "IntervalSeconds": 60,
            "BackoffRate": 2.0,
            "MaxAttempts": 3,
        },
    ]


def cache_config(days: int) -> dict[str, Any]:
    return {"Enabled": True, "ExpireAfter": f"P{days}D"}


# --------------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------------


def _code_input(resources: PipelineResources) -> dict[str, Any]:
    return _processing_input(CODE_CHANNEL, resources.code_uri)


def _processing_input(name: str, uri: Any) -> dict[str, Any]:
    return {
        "InputName": name,
        "AppManaged": False,
        "S3Input": {
            "S3Uri": uri,
            "LocalPath": f"{PROCESSING_ROOT}/input/{name}",
            "S3DataType": "S3Prefix",
            "S3InputMode": "File",
            "S3DataDistributionType": "FullyReplicated",
            "S3CompressionType": "None",
        },
    }


def _processing_output(name: str, uri: Any) -> dict[str, Any]:
    return {
        "OutputName": name,
        "AppManaged": False,
        "S3Output": {"S3Uri": uri, "LocalPath": f"{PROCESSING_ROOT}/output/{name}", "S3UploadMode": "EndOfJob"},
    }


def _processing_step(
    name: str,
    resources: PipelineResources,
    training: TrainingSettings,
    *,
    arguments: Sequence[Any],
    inputs: Sequence[dict[str, Any]],
    outputs: Sequence[dict[str, Any]],
    description: str,
) -> dict[str, Any]:
    return {
        "Name": name,
        "Type": "Processing",
        "Description": description,
        "Arguments": {
            "ProcessingResources": {
                "ClusterConfig": {
                    "InstanceCount": 1,
                    "InstanceType": parameter(PROCESSING_INSTANCE_TYPE),
                    "VolumeSizeInGB": training.volume_size_gb,
                }
            },
            "AppSpecification": {
                "ImageUri": resources.processing_image,
                "ContainerEntrypoint": [
                    "bash",
                    "-c",
                    BOOTSTRAP,
                    "bootstrap",
                    f"{PROCESSING_ROOT}/input/{CODE_CHANNEL}",
                ],
                "ContainerArguments": list(arguments),
            },
            "Environment": {**ENVIRONMENT, "AWS_DEFAULT_REGION": resources.region},
            "RoleArn": resources.role_arn,
            "ProcessingInputs": [_code_input(resources), *inputs],
            "ProcessingOutputConfig": {"Outputs": list(outputs), "KmsKeyId": resources.model_key_arn},
            "StoppingCondition": {"MaxRuntimeInSeconds": PROCESSING_MAX_RUNTIME_SECONDS},
        },
        "RetryPolicies": retry_policies(),
    }


def export_step(resources: PipelineResources, training: TrainingSettings, class_names: Sequence[str]) -> dict[str, Any]:
    step = _processing_step(
        EXPORT,
        resources,
        training,
        description="Newest approved label per image from the offline store; QA; versioned dataset manifest",
        arguments=[
            "export",
            "--feature-group",
            resources.feature_group,
            "--class-names",
            json.dumps(list(class_names)),
            "--min-images",
            as_text(parameter(MIN_IMAGES)),
            "--publish",
            f"s3://{resources.model_bucket}/datasets/",
        ],
        inputs=[],
        outputs=[
            _processing_output("export", s3_uri(resources.model_bucket, "pipeline-runs", execution_id(), "export"))
        ],
    )
    step["PropertyFiles"] = [
        {"PropertyFileName": DATASET_PROPERTIES, "OutputName": "export", "FilePath": "dataset.json"}
    ]
    return step


def dataset_version() -> dict[str, Any]:
    return json_get(EXPORT, DATASET_PROPERTIES, "dataset_version")


def prepare_step(resources: PipelineResources, training: TrainingSettings) -> dict[str, Any]:
    step = _processing_step(
        PREPARE,
        resources,
        training,
        description="Recreate the dataset version from its manifest; stable split; YOLO layout",
        arguments=[
            "prepare",
            "--validation-fraction",
            str(training.validation_fraction),
            "--test-fraction",
            str(training.test_fraction),
        ],
        inputs=[_processing_input("manifest", json_get(EXPORT, DATASET_PROPERTIES, "manifest_uri"))],
        outputs=[
            _processing_output(
                "dataset",
                s3_uri(resources.model_bucket, "prepared", join([dataset_version(), "-", resources.code_version])),
            )
        ],
    )
    step["CacheConfig"] = cache_config(training.cache_days)
    return step


def training_step(suffix: str, spot: bool, resources: PipelineResources, training: TrainingSettings) -> dict[str, Any]:
    stopping: dict[str, Any] = {"MaxRuntimeInSeconds": training.max_runtime_seconds}
    if spot:
        stopping["MaxWaitTimeInSeconds"] = min(2 * training.max_runtime_seconds, MAX_WAIT_LIMIT_SECONDS)
    checkpoint_uri = s3_uri(
        resources.model_bucket,
        "checkpoints",
        join([dataset_version(), "-", resources.code_version]),
        join(
            [
                "yolov8",
                parameter(MODEL_SIZE),
                "-",
                parameter(IMAGE_SIZE),
                "px-",
                parameter(EPOCHS),
                "ep-b",
                parameter(BATCH_SIZE),
            ]
        ),
    )
    return {
        "Name": f"Train{suffix}",
        "Type": "Training",
        "Description": f"YOLOv8 (Ultralytics) on {'managed spot' if spot else 'on-demand'} capacity; ONNX export",
        "Arguments": {
            "AlgorithmSpecification": {
                "TrainingImage": resources.training_image,
                "TrainingInputMode": "File",
                "ContainerEntrypoint": ["bash", "-c", BOOTSTRAP, "bootstrap", f"/opt/ml/input/data/{CODE_CHANNEL}"],
                "ContainerArguments": ["train"],
                "MetricDefinitions": [{"Name": name, "Regex": regex} for name, regex in METRIC_DEFINITIONS],
                "EnableSageMakerMetricsTimeSeries": True,
            },
            "HyperParameters": {
                "model_size": parameter(MODEL_SIZE),
                "epochs": as_text(parameter(EPOCHS)),
                "image_size": as_text(parameter(IMAGE_SIZE)),
                "batch_size": as_text(parameter(BATCH_SIZE)),
                "onnx_opset": str(training.onnx_opset),
                "pretrained_weights": parameter(PRETRAINED_WEIGHTS),
                "seed": "0",
            },
            "InputDataConfig": [
                _channel(CODE_CHANNEL, resources.code_uri),
                _channel(DATASET_CHANNEL, processing_output_uri(PREPARE, "dataset")),
            ],
            "OutputDataConfig": {
                "S3OutputPath": f"s3://{resources.model_bucket}/training-jobs/",
                "KmsKeyId": resources.model_key_arn,
            },
            "ResourceConfig": {
                "InstanceCount": 1,
                "InstanceType": parameter(TRAINING_INSTANCE_TYPE),
                "VolumeSizeInGB": training.volume_size_gb,
            },
            "RoleArn": resources.role_arn,
            "StoppingCondition": stopping,
            "EnableManagedSpotTraining": spot,
            "CheckpointConfig": {"S3Uri": checkpoint_uri, "LocalPath": CHECKPOINT_PATH},
            "Environment": {**ENVIRONMENT, "AWS_DEFAULT_REGION": resources.region},
        },
        "CacheConfig": cache_config(training.cache_days),
        "RetryPolicies": retry_policies(),
    }


def _channel(name: str, uri: Any) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
        },
        "InputMode": "File",
    }


def evaluate_step(suffix: str, resources: PipelineResources, training: TrainingSettings) -> dict[str, Any]:
    run = ("pipeline-runs", execution_id())
    step = _processing_step(
        f"Evaluate{suffix}",
        resources,
        training,
        description="Test-split metrics of the ONNX model (property file); model.tar.gz for the registry",
        arguments=[
            "evaluate",
            "--confidence-threshold",
            as_text(parameter(CONFIDENCE_THRESHOLD)),
            "--iou-threshold",
            as_text(parameter(IOU_THRESHOLD)),
        ],
        inputs=[
            _processing_input("model", get(f"Steps.Train{suffix}.ModelArtifacts.S3ModelArtifacts")),
            _processing_input("dataset", processing_output_uri(PREPARE, "dataset")),
        ],
        outputs=[
            _processing_output("evaluation", s3_uri(resources.model_bucket, *run, "evaluation")),
            _processing_output("package", s3_uri(resources.model_bucket, *run, "package")),
        ],
    )
    step["PropertyFiles"] = [
        {"PropertyFileName": EVALUATION_REPORT, "OutputName": "evaluation", "FilePath": "evaluation.json"}
    ]
    return step


def gate_metric(suffix: str) -> dict[str, Any]:
    return json_get(f"Evaluate{suffix}", EVALUATION_REPORT, "gate_metric.value")


def baseline_step(suffix: str, resources: PipelineResources) -> dict[str, Any]:
    return {
        "Name": f"RegressionBaseline{suffix}",
        "Type": "Lambda",
        "Description": "mAP50-95 of the currently approved model package, minus the margin",
        "DependsOn": [f"Evaluate{suffix}"],  # look the registry up only now, right before the gate
        "FunctionArn": resources.baseline_function_arn,
        "Arguments": {
            "model_package_group": resources.model_package_group,
            "regression_margin": parameter(REGRESSION_MARGIN),
        },
        "OutputParameters": [{"OutputName": name, "OutputType": kind} for name, kind in BASELINE_OUTPUTS.items()],
    }


def baseline_output(suffix: str, name: str) -> dict[str, str]:
    return get(f"Steps.RegressionBaseline{suffix}.OutputParameters['{name}']")


def register_step(suffix: str, resources: PipelineResources) -> dict[str, Any]:
    evaluation = processing_output_uri(f"Evaluate{suffix}", "evaluation")
    package = processing_output_uri(f"Evaluate{suffix}", "package")
    return {
        "Name": f"RegisterModel{suffix}",
        "Type": "RegisterModel",
        "Description": "Model package: model.tar.gz (ONNX + model.json), test metrics, dataset manifest",
        "Arguments": {
            "ModelPackageGroupName": resources.model_package_group,
            "ModelPackageDescription": join(
                ["YOLOv8", parameter(MODEL_SIZE), "on", dataset_version(), "- test mAP50-95", gate_metric(suffix)],
                on=" ",
            ),
            "ModelApprovalStatus": parameter(APPROVAL_STATUS),
            "InferenceSpecification": {
                "Containers": [
                    {"Image": resources.processing_image, "ModelDataUrl": join([package, "model.tar.gz"], on="/")}
                ],
                "SupportedContentTypes": ["image/jpeg", "image/png"],
                "SupportedResponseMIMETypes": ["application/json"],
            },
            "ModelMetrics": {
                "ModelQuality": {
                    "Statistics": {
                        "ContentType": "application/json",
                        "S3Uri": join([evaluation, "evaluation.json"], on="/"),
                    }
                }
            },
            "CustomerMetadataProperties": {
                "mAP50-95": as_text(gate_metric(suffix)),
                "dataset_version": dataset_version(),
                "dataset_manifest": json_get(EXPORT, DATASET_PROPERTIES, "manifest_uri"),
                "pipeline_execution": get("Execution.PipelineExecutionArn"),
                "model_size": parameter(MODEL_SIZE),
                "image_size": as_text(parameter(IMAGE_SIZE)),
                "managed_spot": str(CAPACITIES[suffix]).lower(),
            },
        },
        "RetryPolicies": [retry_policies()[0]],
    }


def fail_step(suffix: str) -> dict[str, Any]:
    return {
        "Name": f"QualityGateFailed{suffix}",
        "Type": "Fail",
        "Description": "The new model is below the threshold or regresses from the approved one",
        "Arguments": {
            "ErrorMessage": join(
                [
                    "Quality gate failed, model not registered: test mAP50-95",
                    gate_metric(suffix),
                    "must be >= the threshold",
                    parameter(MAP_THRESHOLD),
                    "and >= the regression floor",
                    baseline_output(suffix, "regression_floor"),
                    "(approved package",
                    baseline_output(suffix, "baseline_package_arn"),
                    "mAP50-95",
                    baseline_output(suffix, "baseline_metric"),
                    "minus margin",
                    parameter(REGRESSION_MARGIN),
                    ").",
                ],
                on=" ",
            )
        },
    }


def quality_gate_step(suffix: str, resources: PipelineResources) -> dict[str, Any]:
    return {
        "Name": f"QualityGate{suffix}",
        "Type": "Condition",
        "Description": "Register only if mAP50-95 >= threshold and >= approved model's mAP50-95 - margin",
        "Arguments": {
            "Conditions": [
                {
                    "Type": "GreaterThanOrEqualTo",
                    "LeftValue": gate_metric(suffix),
                    "RightValue": parameter(MAP_THRESHOLD),
                },
                {
                    "Type": "GreaterThanOrEqualTo",
                    "LeftValue": gate_metric(suffix),
                    "RightValue": baseline_output(suffix, "regression_floor"),
                },
            ],
            "IfSteps": [register_step(suffix, resources)],
            "ElseSteps": [fail_step(suffix)],
        },
    }


def training_chain(suffix: str, resources: PipelineResources, training: TrainingSettings) -> list[dict[str, Any]]:
    return [
        training_step(suffix, CAPACITIES[suffix], resources, training),
        evaluate_step(suffix, resources, training),
        baseline_step(suffix, resources),
        quality_gate_step(suffix, resources),
    ]


def capacity_step(resources: PipelineResources, training: TrainingSettings) -> dict[str, Any]:
    return {
        "Name": CAPACITY,
        "Type": "Condition",
        "Description": "Managed spot training or on-demand (a run parameter)",
        "Arguments": {
            "Conditions": [{"Type": "Equals", "LeftValue": parameter(USE_SPOT), "RightValue": True}],
            "IfSteps": training_chain("Spot", resources, training),
            "ElseSteps": training_chain("OnDemand", resources, training),
        },
    }


def parameters(training: TrainingSettings) -> list[dict[str, Any]]:
    def p(name: str, kind: str, default: Any, **extra: Any) -> dict[str, Any]:
        return {"Name": name, "Type": kind, "DefaultValue": default, **extra}

    return [
        p(MODEL_SIZE, "String", training.model_size, EnumValues=["n", "s", "m", "l", "x"]),
        p(EPOCHS, "Integer", training.epochs),
        p(IMAGE_SIZE, "Integer", training.image_size),
        p(BATCH_SIZE, "Integer", training.batch_size),
        p(TRAINING_INSTANCE_TYPE, "String", training.training_instance_type),
        p(PROCESSING_INSTANCE_TYPE, "String", training.processing_instance_type),
        p(USE_SPOT, "Boolean", training.use_spot),
        p(PRETRAINED_WEIGHTS, "String", training.pretrained_weights_s3_uri or ""),
        p(MIN_IMAGES, "Integer", training.min_images),
        p(MAP_THRESHOLD, "Float", training.map50_95_threshold),
        p(REGRESSION_MARGIN, "Float", training.regression_margin),
        p(CONFIDENCE_THRESHOLD, "Float", training.confidence_threshold),
        p(IOU_THRESHOLD, "Float", training.iou_threshold),
        p(APPROVAL_STATUS, "String", training.approval_status, EnumValues=["PendingManualApproval", "Approved"]),
    ]


def pipeline_definition(
    resources: PipelineResources, training: TrainingSettings, class_names: Sequence[str]
) -> dict[str, Any]:
    """The whole definition document (`PipelineDefinitionBody` once rendered to a JSON string)."""
    return {
        "Version": DEFINITION_VERSION,
        "Metadata": {},
        "Parameters": parameters(training),
        "Steps": [
            export_step(resources, training, class_names),
            prepare_step(resources, training),
            capacity_step(resources, training),
        ],
    }


def iter_steps(steps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every step of a definition, those inside condition branches included (depth first)."""
    found: list[dict[str, Any]] = []
    for step in steps:
        found.append(step)
        if step["Type"] == "Condition":
            found.extend(iter_steps(step["Arguments"].get("IfSteps", [])))
            found.extend(iter_steps(step["Arguments"].get("ElseSteps", [])))
    return found
