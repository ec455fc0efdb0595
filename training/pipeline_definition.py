"""The SageMaker pipeline definition, generated as plain JSON at synth time (no SageMaker SDK).

    ExportDataset -> PrepareDataset -> ChooseCapacity (UseSpotInstances?) -> Tune? (Tune)
        -> TrainSpot | TuneSpot | TrainOnDemand | TuneOnDemand     (one of four identical chains runs)
        -> FindChampion -> Evaluate -> QualityGate --fail--------> QualityGateFailed
                                                   --otherwise--> NewModel? --register--> RegisterModel
                                                                            --no change--> (end, nothing registered)

Why four chains: `CreateTrainingJob` rejects `MaxWaitTimeInSeconds` unless managed spot training is
on, and a pipeline cannot join the two branches of a condition again, so spot on/off and tuning
on/off (run parameters) select one of four otherwise identical chains, built by the same function.

Training and tuning jobs run the step code in SageMaker script mode (a tuning job cannot set a
container entry point): the image's training toolkit unpacks the `TrainingSource` archive, installs
its requirements and runs `training/steps/job.py`. Processing jobs unpack the step code and run
`training/steps/run.sh` (the bootstrap below).

The champion (the newest approved model package) is looked up by a Lambda step right before the
evaluation, which scores it and the new model on the same test images and writes the gate's verdict
(`register`, `no_change` or `fail`, see training/steps/gate.py) into its property file.

Caching: PrepareDataset and Train*/Tune* are cached (their inputs are content-addressed: a dataset
version and the step code's asset hash), so a run over unchanged labels with unchanged parameters
reuses the prepared dataset and the trained model. ExportDataset (reads live labels), Evaluate*
(writes this run's archive), the champion lookup (reads the live registry) and registration are
never cached.

Values may be CDK tokens (ARNs, bucket names, the asset URL): the stack renders the dict with
`Stack.to_json_string`, so they resolve inside the JSON string at deploy time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.config import TrainingSettings
from training.steps.gate import FAIL, REGISTER, REGISTRY_METADATA
from training.steps.train import BEST_OBJECTIVE, METRIC_DEFINITIONS

DEFINITION_VERSION = "2020-12-01"

# -- parameters ---------------------------------------------------------------------------------------
MODEL_SIZE = "ModelSize"
EPOCHS = "Epochs"
IMAGE_SIZE = "ImageSize"
BATCH_SIZE = "BatchSize"
PATIENCE = "Patience"
LEARNING_RATE = "LearningRate"
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
TUNE = "Tune"
TUNING_MAX_JOBS = "TuningMaxJobs"
TUNING_MAX_PARALLEL_JOBS = "TuningMaxParallelJobs"

# -- steps --------------------------------------------------------------------------------------------
EXPORT = "ExportDataset"
PREPARE = "PrepareDataset"
CAPACITY = "ChooseCapacity"
CAPACITIES = {"Spot": True, "OnDemand": False}  # suffix of each chain's step names -> managed spot on/off
TUNED = "Tuned"  # added to the suffix of the chains that tune instead of training once
DATASET_PROPERTIES = "DatasetProperties"
EVALUATION_REPORT = "EvaluationReport"
CHAMPION_OUTPUTS = {"champion_package_arn": "String", "champion_model_url": "String"}
TUNED_HYPERPARAMETERS = ("model_size", "epochs", "image_size", "learning_rate")

# -- containers ---------------------------------------------------------------------------------------
PROCESSING_ROOT = "/opt/ml/processing"
CODE_CHANNEL = "code"
TRAINING_JOBS_PREFIX = "training-jobs/"
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


JOB_ENTRY = "training/steps/job.py"  # what the training toolkit runs in script mode


@dataclass(frozen=True)
class PipelineResources:
    """The names and ARNs the definition points at (CDK tokens or literal strings)."""

    role_arn: str
    model_bucket: str
    model_key_arn: str
    code_uri: str  # s3:// URL of the zipped step code (a CDK asset), for processing jobs
    source_uri: str  # s3:// URL of the same code as sourcedir.tar.gz, for training and tuning jobs
    code_version: str  # the asset hash: content-addresses cached outputs by code version too
    feature_group: str
    model_package_group: str
    champion_function_arn: str
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
            "--min-validation-images",
            str(training.min_validation_images),
            "--min-test-images",
            str(training.min_test_images),
            "--min-test-defects",
            str(training.min_test_defects),
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


def hyperparameters(resources: PipelineResources, training: TrainingSettings) -> dict[str, Any]:
    """Every hyperparameter of a training job (the train step requires each), and script mode's own."""
    return {
        "model_size": parameter(MODEL_SIZE),
        "epochs": as_text(parameter(EPOCHS)),
        "image_size": as_text(parameter(IMAGE_SIZE)),
        "batch_size": as_text(parameter(BATCH_SIZE)),
        "patience": as_text(parameter(PATIENCE)),
        "optimizer": training.optimizer,
        "learning_rate": as_text(parameter(LEARNING_RATE)),
        "augmentation": json.dumps(training.augmentation.model_dump(), sort_keys=True, separators=(",", ":")),
        "onnx_opset": str(training.onnx_opset),
        "seed": "0",
        "pretrained_weights": parameter(PRETRAINED_WEIGHTS),
        "sagemaker_program": JOB_ENTRY,
        "sagemaker_submit_directory": resources.source_uri,
        "sagemaker_region": resources.region,
    }


def _training_job(spot: bool, resources: PipelineResources, training: TrainingSettings) -> dict[str, Any]:
    """What a training job and each training job of a tuning job share: data, output, capacity, checkpoints."""
    stopping: dict[str, Any] = {"MaxRuntimeInSeconds": training.max_runtime_seconds}
    if spot:
        stopping["MaxWaitTimeInSeconds"] = min(2 * training.max_runtime_seconds, MAX_WAIT_LIMIT_SECONDS)
    return {
        "RoleArn": resources.role_arn,
        "InputDataConfig": [_channel(DATASET_CHANNEL, processing_output_uri(PREPARE, "dataset"))],
        "OutputDataConfig": {
            "S3OutputPath": f"s3://{resources.model_bucket}/{TRAINING_JOBS_PREFIX}",
            "KmsKeyId": resources.model_key_arn,
        },
        "ResourceConfig": {
            "InstanceCount": 1,
            "InstanceType": parameter(TRAINING_INSTANCE_TYPE),
            "VolumeSizeInGB": training.volume_size_gb,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": spot,
        # One folder per dataset and code version; inside it the train step keeps one run per configuration,
        # so an interrupted job (or a tuning job's training job) resumes only its own run.
        "CheckpointConfig": {
            "S3Uri": s3_uri(
                resources.model_bucket, "checkpoints", join([dataset_version(), "-", resources.code_version])
            ),
            "LocalPath": CHECKPOINT_PATH,
        },
        "Environment": {**ENVIRONMENT, "AWS_DEFAULT_REGION": resources.region},
    }


def _metric_definitions() -> list[dict[str, str]]:
    return [{"Name": name, "Regex": regex} for name, regex in METRIC_DEFINITIONS]


def training_step(suffix: str, spot: bool, resources: PipelineResources, training: TrainingSettings) -> dict[str, Any]:
    return {
        "Name": f"Train{suffix}",
        "Type": "Training",
        "Description": f"YOLOv8 (Ultralytics) on {'managed spot' if spot else 'on-demand'} capacity; ONNX export",
        "Arguments": {
            "AlgorithmSpecification": {
                "TrainingImage": resources.training_image,
                "TrainingInputMode": "File",
                "MetricDefinitions": _metric_definitions(),
                "EnableSageMakerMetricsTimeSeries": True,
            },
            "HyperParameters": hyperparameters(resources, training),
            **_training_job(spot, resources, training),
        },
        "CacheConfig": cache_config(training.cache_days),
        "RetryPolicies": retry_policies(),
    }


def tuning_ranges(training: TrainingSettings) -> dict[str, Any]:
    ranges = training.tuning.ranges
    return {
        "CategoricalParameterRanges": [
            {"Name": "model_size", "Values": list(ranges.model_size)},
            {"Name": "image_size", "Values": [str(size) for size in ranges.image_size]},
        ],
        "IntegerParameterRanges": [
            {
                "Name": "epochs",
                "MinValue": str(ranges.epochs[0]),
                "MaxValue": str(ranges.epochs[1]),
                "ScalingType": "Auto",
            }
        ],
        "ContinuousParameterRanges": [
            {
                "Name": "learning_rate",
                "MinValue": str(ranges.learning_rate[0]),
                "MaxValue": str(ranges.learning_rate[1]),
                "ScalingType": "Logarithmic",
            }
        ],
    }


def tuning_step(suffix: str, spot: bool, resources: PipelineResources, training: TrainingSettings) -> dict[str, Any]:
    """A hyperparameter tuning job over the train and validation splits; the objective is the validation
    mAP50-95 of the weights each training job keeps (its `#best` metric line)."""
    static = {k: v for k, v in hyperparameters(resources, training).items() if k not in TUNED_HYPERPARAMETERS}
    return {
        "Name": f"Tune{suffix}",
        "Type": "Tuning",
        "Description": f"Hyperparameter tuning of YOLOv8 on {'managed spot' if spot else 'on-demand'} capacity",
        "Arguments": {
            "HyperParameterTuningJobConfig": {
                "Strategy": training.tuning.strategy,
                "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": BEST_OBJECTIVE},
                "ResourceLimits": {
                    "MaxNumberOfTrainingJobs": parameter(TUNING_MAX_JOBS),
                    "MaxParallelTrainingJobs": parameter(TUNING_MAX_PARALLEL_JOBS),
                },
                "ParameterRanges": tuning_ranges(training),
                "TrainingJobEarlyStoppingType": "Off",
            },
            "TrainingJobDefinition": {
                "StaticHyperParameters": static,
                "AlgorithmSpecification": {
                    "TrainingImage": resources.training_image,
                    "TrainingInputMode": "File",
                    "MetricDefinitions": _metric_definitions(),
                },
                **_training_job(spot, resources, training),
            },
        },
        "CacheConfig": cache_config(training.cache_days),
        "RetryPolicies": retry_policies(),
    }


def trained_model_uri(suffix: str, tuned: bool, resources: PipelineResources) -> dict[str, Any]:
    """The model.tar.gz of the chain's training job: the training step's, or the tuning job's best one."""
    if not tuned:
        return get(f"Steps.Train{suffix}.ModelArtifacts.S3ModelArtifacts")
    # Sorted by the objective, best first (as the SageMaker SDK's TuningStep.get_top_model_s3_uri reads it).
    best = get(f"Steps.Tune{suffix}.TrainingJobSummaries[0].TrainingJobName")
    return join([f"s3://{resources.model_bucket}/{TRAINING_JOBS_PREFIX}", best, "/output/model.tar.gz"])


def _channel(name: str, uri: Any) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
        },
        "InputMode": "File",
    }


def champion_step(chain: str, model_step: str, resources: PipelineResources) -> dict[str, Any]:
    return {
        "Name": f"FindChampion{chain}",
        "Type": "Lambda",
        "Description": "The newest approved model package of the group (the model to beat) and its archive",
        "DependsOn": [model_step],  # look the registry up only now, right before the evaluation
        "FunctionArn": resources.champion_function_arn,
        "Arguments": {"model_package_group": resources.model_package_group},
        "OutputParameters": [{"OutputName": name, "OutputType": kind} for name, kind in CHAMPION_OUTPUTS.items()],
    }


def champion_output(chain: str, name: str) -> dict[str, str]:
    return get(f"Steps.FindChampion{chain}.OutputParameters['{name}']")


def evaluate_step(
    chain: str, model_uri: Any, resources: PipelineResources, training: TrainingSettings
) -> dict[str, Any]:
    run = ("pipeline-runs", execution_id())
    step = _processing_step(
        f"Evaluate{chain}",
        resources,
        training,
        description="New and approved model on the same test images; the gate's verdict; report; model.tar.gz",
        arguments=[
            "evaluate",
            "--confidence-threshold",
            as_text(parameter(CONFIDENCE_THRESHOLD)),
            "--iou-threshold",
            as_text(parameter(IOU_THRESHOLD)),
            "--map50-95-threshold",
            as_text(parameter(MAP_THRESHOLD)),
            "--regression-margin",
            as_text(parameter(REGRESSION_MARGIN)),
            "--champion-package",
            champion_output(chain, "champion_package_arn"),
            "--champion-model-url",
            champion_output(chain, "champion_model_url"),
            "--quantize-int8",
            str(training.quantize_int8).lower(),
        ],
        inputs=[
            _processing_input("model", model_uri),
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


def evaluation_value(chain: str, path: str) -> dict[str, Any]:
    return json_get(f"Evaluate{chain}", EVALUATION_REPORT, path)


def register_step(chain: str, resources: PipelineResources) -> dict[str, Any]:
    evaluation = processing_output_uri(f"Evaluate{chain}", "evaluation")
    package = processing_output_uri(f"Evaluate{chain}", "package")

    def metadata(name: str) -> dict[str, Any]:
        return evaluation_value(chain, f"registry_metadata.{name}")

    return {
        "Name": f"RegisterModel{chain}",
        "Type": "RegisterModel",
        "Description": "Model package: model.tar.gz (ONNX + model.json), test metrics, report, dataset manifest",
        "Arguments": {
            "ModelPackageGroupName": resources.model_package_group,
            "ModelPackageDescription": join(
                [
                    "YOLOv8",
                    metadata("model_size"),
                    "on",
                    dataset_version(),
                    "- test mAP50-95",
                    metadata("mAP50-95"),
                    "(95% interval",
                    metadata("mAP50-95_interval"),
                    ") - vs approved:",
                    metadata("difference_vs_champion"),
                ],
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
                **{name: metadata(name) for name in REGISTRY_METADATA if name != "verdict"},
                "evaluation_report": join([evaluation, "report/index.html"], on="/"),
                "dataset_version": dataset_version(),
                "dataset_manifest": json_get(EXPORT, DATASET_PROPERTIES, "manifest_uri"),
                "pipeline_execution": get("Execution.PipelineExecutionArn"),
                "managed_spot": str(CAPACITIES[chain.removesuffix(TUNED)]).lower(),
                "tuned": str(chain.endswith(TUNED)).lower(),
            },
        },
        "RetryPolicies": [retry_policies()[0]],
    }


def fail_step(chain: str) -> dict[str, Any]:
    return {
        "Name": f"QualityGateFailed{chain}",
        "Type": "Fail",
        "Description": "The new model is below the threshold or regresses from the approved one",
        "Arguments": {
            "ErrorMessage": join(
                ["Quality gate failed, model not registered:", evaluation_value(chain, "gate.reason")], on=" "
            )
        },
    }


def quality_gate_step(chain: str, resources: PipelineResources) -> dict[str, Any]:
    verdict = evaluation_value(chain, "gate.verdict")
    return {
        "Name": f"QualityGate{chain}",
        "Type": "Condition",
        "Description": "Fail the run when the evaluation's verdict is fail; otherwise a new model or no change",
        "Arguments": {
            "Conditions": [{"Type": "Equals", "LeftValue": verdict, "RightValue": FAIL}],
            "IfSteps": [fail_step(chain)],
            "ElseSteps": [
                {
                    "Name": f"NewModel{chain}",
                    "Type": "Condition",
                    "Description": "Register the model, unless the verdict is no change (nothing to register)",
                    "Arguments": {
                        "Conditions": [{"Type": "Equals", "LeftValue": verdict, "RightValue": REGISTER}],
                        "IfSteps": [register_step(chain, resources)],
                        "ElseSteps": [],
                    },
                }
            ],
        },
    }


def training_chain(
    capacity: str, tuned: bool, resources: PipelineResources, training: TrainingSettings
) -> list[dict[str, Any]]:
    chain = capacity + (TUNED if tuned else "")
    spot = CAPACITIES[capacity]
    model_step = (tuning_step if tuned else training_step)(capacity, spot, resources, training)
    return [
        model_step,
        champion_step(chain, model_step["Name"], resources),
        evaluate_step(chain, trained_model_uri(capacity, tuned, resources), resources, training),
        quality_gate_step(chain, resources),
    ]


def tuning_choice_step(capacity: str, resources: PipelineResources, training: TrainingSettings) -> dict[str, Any]:
    return {
        "Name": f"ChooseTuning{capacity}",
        "Type": "Condition",
        "Description": "Hyperparameter tuning, or one training job with the run's hyperparameters (a run parameter)",
        "Arguments": {
            "Conditions": [{"Type": "Equals", "LeftValue": parameter(TUNE), "RightValue": True}],
            "IfSteps": training_chain(capacity, True, resources, training),
            "ElseSteps": training_chain(capacity, False, resources, training),
        },
    }


def capacity_step(resources: PipelineResources, training: TrainingSettings) -> dict[str, Any]:
    return {
        "Name": CAPACITY,
        "Type": "Condition",
        "Description": "Managed spot training or on-demand (a run parameter)",
        "Arguments": {
            "Conditions": [{"Type": "Equals", "LeftValue": parameter(USE_SPOT), "RightValue": True}],
            "IfSteps": [tuning_choice_step("Spot", resources, training)],
            "ElseSteps": [tuning_choice_step("OnDemand", resources, training)],
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
        p(PATIENCE, "Integer", training.patience),
        p(LEARNING_RATE, "Float", training.learning_rate),
        p(TRAINING_INSTANCE_TYPE, "String", training.training_instance_type),
        p(PROCESSING_INSTANCE_TYPE, "String", training.processing_instance_type),
        p(USE_SPOT, "Boolean", training.use_spot),
        p(TUNE, "Boolean", False),
        p(TUNING_MAX_JOBS, "Integer", training.tuning.max_jobs),
        p(TUNING_MAX_PARALLEL_JOBS, "Integer", training.tuning.max_parallel_jobs),
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
