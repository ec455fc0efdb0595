"""The SageMaker pipeline, authored with the SageMaker Python SDK's workflow API and generated at synth.

    ExportDataset -> PrepareDataset -> ChooseCapacity (UseSpotInstances?) -> Tune? (Tune)
        -> TrainSpot | TuneSpot | TrainOnDemand | TuneOnDemand     (one of four identical chains runs)
        -> FindChampion -> Evaluate -> QualityGate --fail--------> QualityGateFailed
                                                   --otherwise--> NewModel? --register--> RegisterModel
                                                                            --no change--> (end, nothing registered)

The steps are the SDK's own (`ProcessingStep`, `TrainingStep`, `TuningStep`, `LambdaStep`,
`ConditionStep`, `FailStep`, `ModelStep`), built from a `Processor`, an `Estimator`, a
`HyperparameterTuner` and a `Model` in a pipeline session: `Pipeline.definition()` is the JSON that
the training stack puts in the `AWS::SageMaker::Pipeline` resource. Nothing here calls AWS: the
session is offline (`offline_session`): a fixed region, credentials that are never used, no SDK
defaults files, no telemetry, and any request the SDK would still send fails synth naming the
operation. Every location is an explicit S3 URI and every image the project's own (training/
dlc_registry.py), so the SDK neither uploads code nor looks anything up.

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

Values may be CDK tokens (ARNs, bucket names, the asset URL): they pass through the SDK as strings
and the stack renders the definition with `Stack.to_json_string`, so they resolve at deploy time.
Only the training stack imports this module (the SDK costs about 2 s to import; see the guide).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import boto3
from sagemaker.estimator import Estimator
from sagemaker.inputs import TrainingInput
from sagemaker.lambda_helper import Lambda
from sagemaker.model import Model
from sagemaker.model_metrics import MetricsSource, ModelMetrics
from sagemaker.processing import ProcessingInput, ProcessingOutput, Processor
from sagemaker.session_settings import SessionSettings
from sagemaker.tuner import (
    CategoricalParameter,
    ContinuousParameter,
    HyperparameterTuner,
    IntegerParameter,
    ParameterRange,
)
from sagemaker.workflow.condition_step import ConditionStep
from sagemaker.workflow.conditions import ConditionEquals
from sagemaker.workflow.entities import PipelineVariable
from sagemaker.workflow.execution_variables import ExecutionVariables
from sagemaker.workflow.fail_step import FailStep
from sagemaker.workflow.functions import Join, JsonGet
from sagemaker.workflow.lambda_step import LambdaOutput, LambdaOutputTypeEnum, LambdaStep
from sagemaker.workflow.model_step import ModelStep
from sagemaker.workflow.parameters import (
    Parameter,
    ParameterBoolean,
    ParameterFloat,
    ParameterInteger,
    ParameterString,
)
from sagemaker.workflow.pipeline import Pipeline
from sagemaker.workflow.pipeline_context import PipelineSession
from sagemaker.workflow.properties import PropertyFile
from sagemaker.workflow.retry import (
    RetryPolicy,
    SageMakerJobExceptionTypeEnum,
    SageMakerJobStepRetryPolicy,
    StepExceptionTypeEnum,
    StepRetryPolicy,
)
from sagemaker.workflow.step_collections import StepCollection
from sagemaker.workflow.steps import CacheConfig, ProcessingStep, Step, TrainingStep, TuningStep

from shared.config import TrainingSettings
from training.job_limits import MAX_WAIT_LIMIT_SECONDS, PROCESSING_MAX_RUNTIME_SECONDS
from training.quiet_sdk import quiet_sdk
from training.steps.gate import FAIL, REGISTER, REGISTRY_METADATA
from training.steps.train import BEST_OBJECTIVE, METRIC_DEFINITIONS

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
JOB_ENTRY = "training/steps/job.py"  # what the training toolkit runs in script mode


@dataclass(frozen=True)
class PipelineResources:
    """The names and ARNs the definition points at (CDK tokens or literal strings)."""

    pipeline_name: str
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
# The SDK, offline
# --------------------------------------------------------------------------------------------------

# The SDK needs a region to create its clients. None of them may send anything, and the region reaches
# nothing in the definition (the deployment's region comes in `PipelineResources.region`). A name that is
# no AWS region also keeps the SDK's telemetry, which it sends only for regions it knows, from starting.
SDK_REGION = "offline"
# Given to the session so that it reads no SDK defaults files (/etc/xdg/sagemaker/config.yaml,
# ~/.config/sagemaker/config.yaml: a VPC, tags or keys for every job on one machine and not on another).
NO_SDK_DEFAULTS = {"SchemaVersion": "1.0"}


class OfflineSessionError(RuntimeError):
    """The SDK tried to call AWS while building the definition (synth must not)."""


def _refuse_request(event_name: str = "", **_: Any) -> None:
    operation = event_name.removeprefix("before-send.")
    raise OfflineSessionError(f"building the pipeline definition must not call AWS, but the SDK sent {operation}")


class OfflineSession(PipelineSession):
    """A pipeline session that captures the steps' requests and never sends one.

    Fixed region, credentials that exist only so botocore never looks for real ones, no SDK defaults;
    a role is taken as given (the SDK would look a bare role name up in IAM, and a CDK token has no
    `/`), and a request that still reaches botocore fails synth, naming the operation.
    """

    def __init__(self) -> None:
        boto_session = boto3.Session(
            region_name=SDK_REGION,
            aws_access_key_id="offline",
            aws_secret_access_key="offline",  # noqa: S106 - never sent
        )
        boto_session.events.register("before-send", _refuse_request)  # copied into every client made from it
        super().__init__(
            boto_session=boto_session,
            sagemaker_config=NO_SDK_DEFAULTS,
            # No JumpStart tags: the SDK would parse every model URI (bucket names with tokens) for them.
            settings=SessionSettings(include_jumpstart_tags=False),
        )
        # No defaults at all from here on; the SDK would also check the config against its JSON schema on
        # every lookup (some 180 while building this pipeline, 10 s in all).
        self.sagemaker_config = {}

    def expand_role(self, role: str) -> str:
        return role

    @contextlib.contextmanager
    def as_default(self) -> Iterator[None]:
        """This session's boto3 session as boto3's default while the pipeline is built: parts of the SDK make
        clients of their own with `boto3.client` (every Estimator a TensorBoard app's), and the default
        session would look for credentials, up to the instance metadata service."""
        default = boto3.DEFAULT_SESSION
        boto3.DEFAULT_SESSION = self.boto_session
        try:
            yield
        finally:
            boto3.DEFAULT_SESSION = default

    def default_bucket(self) -> str:
        raise OfflineSessionError("every S3 location of the pipeline is explicit: the SDK asked for its default bucket")


@dataclass(frozen=True)
class Build:
    """What every step is made of: the resources, the settings, the run parameters and the offline session."""

    resources: PipelineResources
    training: TrainingSettings
    parameters: dict[str, Parameter]
    session: PipelineSession

    def parameter(self, name: str) -> Parameter:
        return self.parameters[name]


# --------------------------------------------------------------------------------------------------
# Expressions
# --------------------------------------------------------------------------------------------------


def join(values: Sequence[Any], on: str = "") -> Join:
    """`Std:Join`; also how a number or boolean becomes the string a job argument needs.

    Always one flat join: a nested join is inlined and adjacent literals merged, so the service
    never has to evaluate a join inside a join.
    """
    parts: list[Any] = []
    for index, value in enumerate(values):
        if index and on:
            parts.append(on)
        parts.extend(value.values if isinstance(value, Join) and value.on == "" else [value])
    flat: list[Any] = []
    for part in parts:
        if isinstance(part, str) and flat and isinstance(flat[-1], str):
            flat[-1] += part
        else:
            flat.append(part)
    return Join(on="", values=flat)


def as_text(value: Any) -> Join:
    return join([value])


def s3_uri(bucket: str, *parts: Any) -> Join:
    return join([f"s3://{bucket}", *parts], on="/")


def given_uri(uri: str) -> Join:
    """An S3 URI that may hold CDK tokens, as an expression: the SDK takes it as given (it parses a literal
    one, which a token's brackets break, and would upload anything not starting with s3://)."""
    return Join(on="", values=[uri])


def output_uri(step: ProcessingStep, output: str) -> PipelineVariable:
    return step.properties.ProcessingOutputConfig.Outputs[output].S3Output.S3Uri


def retry_policies() -> list[RetryPolicy]:
    """Transient failures are retried with exponential backoff; a job's own error is not."""
    return [
        StepRetryPolicy(
            exception_types=[StepExceptionTypeEnum.SERVICE_FAULT, StepExceptionTypeEnum.THROTTLING],
            interval_seconds=10,
            backoff_rate=2.0,
            max_attempts=5,
        ),
        SageMakerJobStepRetryPolicy(
            exception_types=[
                SageMakerJobExceptionTypeEnum.INTERNAL_ERROR,
                SageMakerJobExceptionTypeEnum.CAPACITY_ERROR,
                SageMakerJobExceptionTypeEnum.RESOURCE_LIMIT,
            ],
            interval_seconds=60,
            backoff_rate=2.0,
            max_attempts=3,
        ),
    ]


def cache_config(days: int) -> CacheConfig:
    return CacheConfig(enable_caching=True, expire_after=f"P{days}D")


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------


def run_parameters(training: TrainingSettings) -> dict[str, Parameter]:
    """The per-run parameters, by name, with config.yaml's values as defaults."""
    parameters: list[Parameter] = [
        ParameterString(name=MODEL_SIZE, default_value=training.model_size, enum_values=["n", "s", "m", "l", "x"]),
        ParameterInteger(name=EPOCHS, default_value=training.epochs),
        ParameterInteger(name=IMAGE_SIZE, default_value=training.image_size),
        ParameterInteger(name=BATCH_SIZE, default_value=training.batch_size),
        ParameterInteger(name=PATIENCE, default_value=training.patience),
        ParameterFloat(name=LEARNING_RATE, default_value=training.learning_rate),
        ParameterString(name=TRAINING_INSTANCE_TYPE, default_value=training.training_instance_type),
        ParameterString(name=PROCESSING_INSTANCE_TYPE, default_value=training.processing_instance_type),
        ParameterBoolean(name=USE_SPOT, default_value=training.use_spot),
        ParameterBoolean(name=TUNE, default_value=False),
        ParameterInteger(name=TUNING_MAX_JOBS, default_value=training.tuning.max_jobs),
        ParameterInteger(name=TUNING_MAX_PARALLEL_JOBS, default_value=training.tuning.max_parallel_jobs),
        ParameterString(name=PRETRAINED_WEIGHTS, default_value=training.pretrained_weights_s3_uri or ""),
        ParameterInteger(name=MIN_IMAGES, default_value=training.min_images),
        ParameterFloat(name=MAP_THRESHOLD, default_value=training.map50_95_threshold),
        ParameterFloat(name=REGRESSION_MARGIN, default_value=training.regression_margin),
        ParameterFloat(name=CONFIDENCE_THRESHOLD, default_value=training.confidence_threshold),
        ParameterFloat(name=IOU_THRESHOLD, default_value=training.iou_threshold),
        ParameterString(
            name=APPROVAL_STATUS,
            default_value=training.approval_status,
            enum_values=["PendingManualApproval", "Approved"],
        ),
    ]
    return {parameter.name: parameter for parameter in parameters}


# --------------------------------------------------------------------------------------------------
# Processing steps: export, prepare, evaluate
# --------------------------------------------------------------------------------------------------


def _processing_input(name: str, uri: Any) -> ProcessingInput:
    return ProcessingInput(
        input_name=name,
        source=uri,
        destination=f"{PROCESSING_ROOT}/input/{name}",
        s3_data_type="S3Prefix",
        s3_input_mode="File",
        s3_data_distribution_type="FullyReplicated",
        s3_compression_type="None",
        app_managed=False,
    )


def _processing_output(name: str, uri: Any) -> ProcessingOutput:
    return ProcessingOutput(
        output_name=name,
        source=f"{PROCESSING_ROOT}/output/{name}",
        destination=uri,
        s3_upload_mode="EndOfJob",
        app_managed=False,
    )


def _processing_step(
    name: str,
    build: Build,
    *,
    arguments: Sequence[Any],
    inputs: Sequence[ProcessingInput],
    outputs: Sequence[ProcessingOutput],
    description: str,
    property_files: Sequence[PropertyFile] = (),
    cached: bool = False,
) -> ProcessingStep:
    """One processing job of the step code: the bootstrap unpacks the code input and runs the step."""
    resources = build.resources
    processor = Processor(
        role=resources.role_arn,
        image_uri=resources.processing_image,
        instance_count=1,
        instance_type=build.parameter(PROCESSING_INSTANCE_TYPE),
        entrypoint=["bash", "-c", BOOTSTRAP, "bootstrap", f"{PROCESSING_ROOT}/input/{CODE_CHANNEL}"],
        volume_size_in_gb=build.training.volume_size_gb,
        output_kms_key=resources.model_key_arn,
        max_runtime_in_seconds=PROCESSING_MAX_RUNTIME_SECONDS,
        env={**ENVIRONMENT, "AWS_DEFAULT_REGION": resources.region},
        sagemaker_session=build.session,
    )
    return ProcessingStep(
        name,
        step_args=processor.run(
            inputs=[_processing_input(CODE_CHANNEL, given_uri(resources.code_uri)), *inputs],
            outputs=list(outputs),
            arguments=list(arguments),
        ),
        description=description,
        property_files=list(property_files),
        cache_config=cache_config(build.training.cache_days) if cached else None,
        retry_policies=retry_policies(),
    )


# The JSON files the pipeline reads values from (`JsonGet`): the dataset version, the gate's verdict.
DATASET_FILE = PropertyFile(name=DATASET_PROPERTIES, output_name="export", path="dataset.json")
EVALUATION_FILE = PropertyFile(name=EVALUATION_REPORT, output_name="evaluation", path="evaluation.json")


def export_step(build: Build, class_names: Sequence[str]) -> ProcessingStep:
    bucket = build.resources.model_bucket
    return _processing_step(
        EXPORT,
        build,
        description="Newest approved label per image from the offline store; QA; versioned dataset manifest",
        arguments=[
            "export",
            "--feature-group",
            build.resources.feature_group,
            "--class-names",
            json.dumps(list(class_names)),
            "--min-images",
            as_text(build.parameter(MIN_IMAGES)),
            "--publish",
            f"s3://{bucket}/datasets/",
        ],
        inputs=[],
        outputs=[
            _processing_output(
                "export", s3_uri(bucket, "pipeline-runs", ExecutionVariables.PIPELINE_EXECUTION_ID, "export")
            )
        ],
        property_files=[DATASET_FILE],
    )


def dataset_value(path: str) -> JsonGet:
    """A value of the export's dataset.json (`dataset_version`, `manifest_uri`)."""
    return JsonGet(step_name=EXPORT, property_file=DATASET_FILE, json_path=path)


def content_version(resources: PipelineResources) -> Join:
    """Dataset version and code version: names the outputs of the cached steps (same inputs, same name)."""
    return join([dataset_value("dataset_version"), "-", resources.code_version])


def prepare_step(build: Build) -> ProcessingStep:
    training = build.training
    return _processing_step(
        PREPARE,
        build,
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
        inputs=[_processing_input("manifest", dataset_value("manifest_uri"))],
        outputs=[
            _processing_output(
                "dataset", s3_uri(build.resources.model_bucket, "prepared", content_version(build.resources))
            )
        ],
        cached=True,
    )


def evaluate_step(chain: str, build: Build, model_uri: Any, dataset_uri: Any, champion: LambdaStep) -> ProcessingStep:
    run = ("pipeline-runs", ExecutionVariables.PIPELINE_EXECUTION_ID)
    bucket = build.resources.model_bucket
    return _processing_step(
        f"Evaluate{chain}",
        build,
        description="New and approved model on the same test images; the gate's verdict; report; model.tar.gz",
        arguments=[
            "evaluate",
            "--confidence-threshold",
            as_text(build.parameter(CONFIDENCE_THRESHOLD)),
            "--iou-threshold",
            as_text(build.parameter(IOU_THRESHOLD)),
            "--map50-95-threshold",
            as_text(build.parameter(MAP_THRESHOLD)),
            "--regression-margin",
            as_text(build.parameter(REGRESSION_MARGIN)),
            "--champion-package",
            champion.properties.Outputs["champion_package_arn"],
            "--champion-model-url",
            champion.properties.Outputs["champion_model_url"],
            "--quantize-int8",
            str(build.training.quantize_int8).lower(),
        ],
        inputs=[_processing_input("model", model_uri), _processing_input("dataset", dataset_uri)],
        outputs=[
            _processing_output("evaluation", s3_uri(bucket, *run, "evaluation")),
            _processing_output("package", s3_uri(bucket, *run, "package")),
        ],
        property_files=[EVALUATION_FILE],
    )


def evaluation_value(evaluate: ProcessingStep, path: str) -> JsonGet:
    """A value of the evaluation's evaluation.json (the verdict, the registry metadata)."""
    return JsonGet(step_name=evaluate.name, property_file=EVALUATION_FILE, json_path=path)


# --------------------------------------------------------------------------------------------------
# Training and tuning
# --------------------------------------------------------------------------------------------------


def hyperparameters(build: Build) -> dict[str, Any]:
    """Every hyperparameter of a training job (the train step requires each), and script mode's own."""
    training, resources = build.training, build.resources
    return {
        "model_size": build.parameter(MODEL_SIZE),
        "epochs": as_text(build.parameter(EPOCHS)),
        "image_size": as_text(build.parameter(IMAGE_SIZE)),
        "batch_size": as_text(build.parameter(BATCH_SIZE)),
        "patience": as_text(build.parameter(PATIENCE)),
        "optimizer": training.optimizer,
        "learning_rate": as_text(build.parameter(LEARNING_RATE)),
        "augmentation": json.dumps(training.augmentation.model_dump(), sort_keys=True, separators=(",", ":")),
        "onnx_opset": str(training.onnx_opset),
        "seed": "0",
        "pretrained_weights": build.parameter(PRETRAINED_WEIGHTS),
        "sagemaker_program": JOB_ENTRY,
        "sagemaker_submit_directory": resources.source_uri,
        "sagemaker_region": resources.region,
    }


def _metric_definitions() -> list[dict[str, str | PipelineVariable]]:
    return [{"Name": name, "Regex": regex} for name, regex in METRIC_DEFINITIONS]


def estimator(spot: bool, build: Build, hyper: dict[str, Any]) -> Estimator:
    """A training job (or each training job of a tuning job): data, output, capacity, checkpoints."""
    training, resources = build.training, build.resources
    return Estimator(
        image_uri=resources.training_image,
        role=resources.role_arn,
        instance_count=1,
        instance_type=build.parameter(TRAINING_INSTANCE_TYPE),
        volume_size=training.volume_size_gb,
        max_run=training.max_runtime_seconds,
        use_spot_instances=spot,
        max_wait=min(2 * training.max_runtime_seconds, MAX_WAIT_LIMIT_SECONDS) if spot else None,
        input_mode="File",
        output_path=f"s3://{resources.model_bucket}/{TRAINING_JOBS_PREFIX}",
        output_kms_key=resources.model_key_arn,
        # One folder per dataset and code version; inside it the train step keeps one run per configuration,
        # so an interrupted job (or a tuning job's training job) resumes only its own run.
        checkpoint_s3_uri=s3_uri(resources.model_bucket, "checkpoints", content_version(resources)),
        checkpoint_local_path=CHECKPOINT_PATH,
        metric_definitions=_metric_definitions(),
        enable_sagemaker_metrics=True,
        environment={**ENVIRONMENT, "AWS_DEFAULT_REGION": resources.region},
        hyperparameters=hyper,
        disable_profiler=True,
        debugger_hook_config=False,
        sagemaker_session=build.session,
    )


def _dataset_channel(prepare: ProcessingStep) -> dict[str, TrainingInput]:
    return {
        DATASET_CHANNEL: TrainingInput(
            s3_data=output_uri(prepare, "dataset"),
            s3_data_type="S3Prefix",
            distribution="FullyReplicated",
            input_mode="File",
        )
    }


def training_step(suffix: str, spot: bool, build: Build, prepare: ProcessingStep) -> TrainingStep:
    return TrainingStep(
        f"Train{suffix}",
        step_args=estimator(spot, build, hyperparameters(build)).fit(inputs=_dataset_channel(prepare)),
        description=f"YOLOv8 (Ultralytics) on {'managed spot' if spot else 'on-demand'} capacity; ONNX export",
        cache_config=cache_config(build.training.cache_days),
        retry_policies=retry_policies(),
    )


def tuning_ranges(training: TrainingSettings) -> dict[str | PipelineVariable, ParameterRange]:
    ranges = training.tuning.ranges
    return {
        "model_size": CategoricalParameter(list(ranges.model_size)),
        "image_size": CategoricalParameter([str(size) for size in ranges.image_size]),
        "epochs": IntegerParameter(ranges.epochs[0], ranges.epochs[1], scaling_type="Auto"),
        "learning_rate": ContinuousParameter(
            ranges.learning_rate[0], ranges.learning_rate[1], scaling_type="Logarithmic"
        ),
    }


def tuning_step(suffix: str, spot: bool, build: Build, prepare: ProcessingStep) -> TuningStep:
    """A hyperparameter tuning job over the train and validation splits; the objective is the validation
    mAP50-95 of the weights each training job keeps (its `#best` metric line)."""
    ranges = tuning_ranges(build.training)
    static = {name: value for name, value in hyperparameters(build).items() if name not in ranges}
    tuner = HyperparameterTuner(
        estimator(spot, build, static),
        objective_metric_name=BEST_OBJECTIVE,
        objective_type="Maximize",
        hyperparameter_ranges=ranges,
        metric_definitions=_metric_definitions(),
        strategy=build.training.tuning.strategy,
        max_jobs=build.parameter(TUNING_MAX_JOBS),
        max_parallel_jobs=build.parameter(TUNING_MAX_PARALLEL_JOBS),
        early_stopping_type="Off",
        # The pipeline names the job itself; a base name also keeps the SDK from parsing the output URI (a
        # bucket name with tokens) to find out whether the model comes from JumpStart.
        base_tuning_job_name=f"Tune{suffix}",
    )
    return TuningStep(
        f"Tune{suffix}",
        step_args=tuner.fit(inputs=_dataset_channel(prepare)),
        description=f"Hyperparameter tuning of YOLOv8 on {'managed spot' if spot else 'on-demand'} capacity",
        cache_config=cache_config(build.training.cache_days),
        retry_policies=retry_policies(),
    )


def trained_model_uri(model_step: TrainingStep | TuningStep, build: Build) -> Any:
    """The model.tar.gz of the chain's training job: the training step's, or the tuning job's best one."""
    if isinstance(model_step, TrainingStep):
        return model_step.properties.ModelArtifacts.S3ModelArtifacts
    # Sorted by the objective, best first: <S3OutputPath><best job>/output/model.tar.gz.
    return model_step.get_top_model_s3_uri(
        top_k=0, s3_bucket=build.resources.model_bucket, prefix=TRAINING_JOBS_PREFIX.rstrip("/")
    )


# --------------------------------------------------------------------------------------------------
# Champion, gate, registration
# --------------------------------------------------------------------------------------------------


def champion_step(chain: str, model_step: Step, build: Build) -> LambdaStep:
    return LambdaStep(
        f"FindChampion{chain}",
        lambda_func=Lambda(function_arn=build.resources.champion_function_arn, session=build.session),
        description="The newest approved model package of the group (the model to beat) and its archive",
        inputs={"model_package_group": build.resources.model_package_group},
        outputs=[
            LambdaOutput(output_name=name, output_type=LambdaOutputTypeEnum[kind])
            for name, kind in CHAMPION_OUTPUTS.items()
        ],
        depends_on=[model_step],  # look the registry up only now, right before the evaluation
    )


def register_step(chain: str, evaluate: ProcessingStep, build: Build) -> ModelStep:
    evaluation = output_uri(evaluate, "evaluation")
    package = output_uri(evaluate, "package")

    def metadata(name: str) -> JsonGet:
        return evaluation_value(evaluate, f"registry_metadata.{name}")

    model = Model(
        image_uri=build.resources.processing_image,
        model_data=join([package, "model.tar.gz"], on="/"),
        sagemaker_session=build.session,
    )
    registration = model.register(
        model_package_group_name=build.resources.model_package_group,
        approval_status=build.parameter(APPROVAL_STATUS),
        description=join(
            [
                "YOLOv8",
                metadata("model_size"),
                "on",
                dataset_value("dataset_version"),
                "- test mAP50-95",
                metadata("mAP50-95"),
                "(95% interval",
                metadata("mAP50-95_interval"),
                ") - vs approved:",
                metadata("difference_vs_champion"),
            ],
            on=" ",
        ),
        content_types=["image/jpeg", "image/png"],
        response_types=["application/json"],
        model_metrics=ModelMetrics(
            model_statistics=MetricsSource(
                content_type="application/json", s3_uri=join([evaluation, "evaluation.json"], on="/")
            )
        ),
        customer_metadata_properties={
            **{name: metadata(name) for name in REGISTRY_METADATA if name != "verdict"},
            "evaluation_report": join([evaluation, "report/index.html"], on="/"),
            "dataset_version": dataset_value("dataset_version"),
            "dataset_manifest": dataset_value("manifest_uri"),
            "pipeline_execution": ExecutionVariables.PIPELINE_EXECUTION_ARN,
            "managed_spot": str(CAPACITIES[chain.removesuffix(TUNED)]).lower(),
            "tuned": str(chain.endswith(TUNED)).lower(),
        },
    )
    return ModelStep(
        f"RegisterModel{chain}",
        step_args=registration,
        description="Model package: model.tar.gz (ONNX + model.json), test metrics, report, dataset manifest",
        retry_policies=[retry_policies()[0]],
    )


def quality_gate_step(chain: str, evaluate: ProcessingStep, build: Build) -> ConditionStep:
    # A property file value compared, as in the SDK's own examples (its type hint for `left` lists no JsonGet).
    verdict: Any = evaluation_value(evaluate, "gate.verdict")
    failed = FailStep(
        f"QualityGateFailed{chain}",
        description="The new model is below the threshold or regresses from the approved one",
        error_message=join(
            ["Quality gate failed, model not registered:", evaluation_value(evaluate, "gate.reason")], on=" "
        ),
    )
    new_model = ConditionStep(
        f"NewModel{chain}",
        description="Register the model, unless the verdict is no change (nothing to register)",
        conditions=[ConditionEquals(left=verdict, right=REGISTER)],
        if_steps=[register_step(chain, evaluate, build)],
        else_steps=[],
    )
    return ConditionStep(
        f"QualityGate{chain}",
        description="Fail the run when the evaluation's verdict is fail; otherwise a new model or no change",
        conditions=[ConditionEquals(left=verdict, right=FAIL)],
        if_steps=[failed],
        else_steps=[new_model],
    )


# --------------------------------------------------------------------------------------------------
# Chains and the pipeline
# --------------------------------------------------------------------------------------------------


def training_chain(capacity: str, tuned: bool, build: Build, prepare: ProcessingStep) -> list[Step | StepCollection]:
    chain = capacity + (TUNED if tuned else "")
    spot = CAPACITIES[capacity]
    model_step = (tuning_step if tuned else training_step)(capacity, spot, build, prepare)
    champion = champion_step(chain, model_step, build)
    evaluate = evaluate_step(
        chain, build, trained_model_uri(model_step, build), output_uri(prepare, "dataset"), champion
    )
    return [model_step, champion, evaluate, quality_gate_step(chain, evaluate, build)]


def tuning_choice_step(capacity: str, build: Build, prepare: ProcessingStep) -> ConditionStep:
    return ConditionStep(
        f"ChooseTuning{capacity}",
        description="Hyperparameter tuning, or one training job with the run's hyperparameters (a run parameter)",
        conditions=[ConditionEquals(left=build.parameter(TUNE), right=True)],
        if_steps=training_chain(capacity, True, build, prepare),
        else_steps=training_chain(capacity, False, build, prepare),
    )


def capacity_step(build: Build, prepare: ProcessingStep) -> ConditionStep:
    return ConditionStep(
        CAPACITY,
        description="Managed spot training or on-demand (a run parameter)",
        conditions=[ConditionEquals(left=build.parameter(USE_SPOT), right=True)],
        if_steps=[tuning_choice_step("Spot", build, prepare)],
        else_steps=[tuning_choice_step("OnDemand", build, prepare)],
    )


def pipeline(
    resources: PipelineResources, training: TrainingSettings, class_names: Sequence[str], session: PipelineSession
) -> Pipeline:
    """The pipeline as SDK objects (what a data scientist extends; see the training guide)."""
    build = Build(resources, training, run_parameters(training), session)
    prepare = prepare_step(build)
    return Pipeline(
        name=resources.pipeline_name,
        parameters=list(build.parameters.values()),
        steps=[export_step(build, class_names), prepare, capacity_step(build, prepare)],
        sagemaker_session=session,
        pipeline_experiment_config=None,  # no experiment and trial per run (the pipeline role may not create them)
    )


def pipeline_definition(
    resources: PipelineResources, training: TrainingSettings, class_names: Sequence[str]
) -> dict[str, Any]:
    """The whole definition document (`PipelineDefinitionBody` once rendered to a JSON string), built offline."""
    session = OfflineSession()
    with quiet_sdk(), session.as_default():
        definition: dict[str, Any] = json.loads(pipeline(resources, training, class_names, session).definition())
    return definition


def iter_steps(steps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every step of a definition, those inside condition branches included (depth first)."""
    found: list[dict[str, Any]] = []
    for step in steps:
        found.append(step)
        if step["Type"] == "Condition":
            found.extend(iter_steps(step["Arguments"].get("IfSteps", [])))
            found.extend(iter_steps(step["Arguments"].get("ElseSteps", [])))
    return found
