"""The SageMaker pipeline definition as synthesized: parameters, steps, dependencies, the gate, caching, retries.

Every job step's arguments are checked against botocore's model of the API SageMaker calls for it
(CreateProcessingJob, CreateTrainingJob, CreateModelPackage), and every container command against
the step code's own command line.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.model import ListShape, MapShape, Shape, StructureShape

from training import pipeline_definition as pd
from training.steps import cli, gate
from training.steps.train import BEST_OBJECTIVE, HYPERPARAMETERS

REPO_ROOT = Path(__file__).resolve().parents[2]
SPOT, ON_DEMAND = "Spot", "OnDemand"
CAPACITIES = (SPOT, ON_DEMAND)
CHAINS = ("Spot", "SpotTuned", "OnDemand", "OnDemandTuned")  # capacity x tuning
EXPRESSIONS = ("Get", "Std:Join", "Std:JsonGet")


def steps_by_name(definition) -> dict[str, dict]:
    return {step["Name"]: step for step in pd.iter_steps(definition["Steps"])}


def is_expression(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in EXPRESSIONS


def references(value: Any) -> list[str]:
    """Every `Get` path inside a value (property references, parameters, execution variables)."""
    text = json.dumps(value)
    return re.findall(r'"Get": "([^"]+)"', text)


def evaluated(value: Any, gets: dict[str, str]) -> Any:
    """A `Std:Join` as the service evaluates it, with each `Get` path replaced by its value in `gets`."""
    if isinstance(value, dict) and set(value) == {"Get"}:
        return gets[value["Get"]]
    if isinstance(value, dict) and set(value) == {"Std:Join"}:
        join = value["Std:Join"]
        return join["On"].join(str(evaluated(part, gets)) for part in join["Values"])
    return value


def step_references(step: dict) -> set[str]:
    """The steps this one waits for (a condition's own conditions only, not its branches' steps)."""
    own = step["Arguments"]["Conditions"] if step["Type"] == "Condition" else step.get("Arguments", {})
    found = {path.split(".")[1] for path in references(own) if path.startswith("Steps.")}
    return found | set(step.get("DependsOn", []))


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------


def test_every_per_run_tunable_is_a_parameter_with_the_configured_default(definition, settings):
    training = settings.training
    parameters = {p["Name"]: (p["Type"], p["DefaultValue"]) for p in definition["Parameters"]}
    assert parameters == {
        "ModelSize": ("String", training.model_size),
        "Epochs": ("Integer", training.epochs),
        "ImageSize": ("Integer", training.image_size),
        "BatchSize": ("Integer", training.batch_size),
        "Patience": ("Integer", training.patience),
        "LearningRate": ("Float", training.learning_rate),
        "TrainingInstanceType": ("String", training.training_instance_type),
        "ProcessingInstanceType": ("String", training.processing_instance_type),
        "UseSpotInstances": ("Boolean", training.use_spot),
        "Tune": ("Boolean", False),  # tuning is off unless a run asks for it
        "TuningMaxJobs": ("Integer", training.tuning.max_jobs),
        "TuningMaxParallelJobs": ("Integer", training.tuning.max_parallel_jobs),
        "PretrainedWeightsS3Uri": ("String", ""),
        "MinImages": ("Integer", training.min_images),
        "MinMap50to95": ("Float", training.map50_95_threshold),
        "RegressionMargin": ("Float", training.regression_margin),
        "ConfidenceThreshold": ("Float", training.confidence_threshold),
        "IouThreshold": ("Float", training.iou_threshold),
        "ModelApprovalStatus": ("String", "PendingManualApproval"),
    }
    enums = {p["Name"]: p.get("EnumValues") for p in definition["Parameters"]}
    assert enums["ModelApprovalStatus"] == ["PendingManualApproval", "Approved"]
    assert enums["ModelSize"] == ["n", "s", "m", "l", "x"]
    for p in definition["Parameters"]:
        assert re.fullmatch(r"[A-Za-z0-9\-_]{1,64}", p["Name"])


def test_every_parameter_is_used_and_every_used_parameter_exists(definition):
    defined = {p["Name"] for p in definition["Parameters"]}
    used = {path.split(".", 1)[1] for path in references(definition["Steps"]) if path.startswith("Parameters.")}
    assert used == defined


# --------------------------------------------------------------------------------------------------
# Steps and dependencies
# --------------------------------------------------------------------------------------------------


def test_steps_and_branches(definition):
    assert [s["Name"] for s in definition["Steps"]] == ["ExportDataset", "PrepareDataset", "ChooseCapacity"]
    capacity = definition["Steps"][2]["Arguments"]
    assert capacity["Conditions"] == [
        {"Type": "Equals", "LeftValue": {"Get": "Parameters.UseSpotInstances"}, "RightValue": True}
    ]
    for branch, suffix in (("IfSteps", SPOT), ("ElseSteps", ON_DEMAND)):
        (choice,) = capacity[branch]
        assert (choice["Name"], choice["Type"]) == (f"ChooseTuning{suffix}", "Condition")
        assert choice["Arguments"]["Conditions"] == [
            {"Type": "Equals", "LeftValue": {"Get": "Parameters.Tune"}, "RightValue": True}
        ]
        for tuning_branch, (model_step, kind, chain) in (
            ("IfSteps", (f"Tune{suffix}", "Tuning", f"{suffix}Tuned")),
            ("ElseSteps", (f"Train{suffix}", "Training", suffix)),
        ):
            steps = choice["Arguments"][tuning_branch]
            assert [(s["Name"], s["Type"]) for s in steps] == [
                (model_step, kind),
                (f"FindChampion{chain}", "Lambda"),
                (f"Evaluate{chain}", "Processing"),
                (f"QualityGate{chain}", "Condition"),
            ]
            gate_step = steps[3]["Arguments"]
            assert [(s["Name"], s["Type"]) for s in gate_step["IfSteps"]] == [(f"QualityGateFailed{chain}", "Fail")]
            (new_model,) = gate_step["ElseSteps"]
            assert (new_model["Name"], new_model["Type"]) == (f"NewModel{chain}", "Condition")
            registered = [(s["Name"], s["Type"]) for s in new_model["Arguments"]["IfSteps"]]
            assert registered == [(f"RegisterModel{chain}-RegisterModel", "RegisterModel")]
            assert new_model["Arguments"]["ElseSteps"] == []  # no change: the run ends, nothing registered
    names = [s["Name"] for s in pd.iter_steps(definition["Steps"])]
    assert len(names) == len(set(names)) == 2 + 1 + 2 + 4 * 7  # export, prepare, capacity, tuning x2, chains
    assert all(re.fullmatch(r"[A-Za-z0-9\-_]{1,64}", name) for name in names)


def test_data_dependencies_chain_the_steps(definition):
    steps = steps_by_name(definition)
    depends = {name: step_references(step) for name, step in steps.items()}
    assert depends["ExportDataset"] == set()
    assert depends["PrepareDataset"] == {"ExportDataset"}
    for capacity in CAPACITIES:
        for chain, model_step in ((capacity, f"Train{capacity}"), (f"{capacity}Tuned", f"Tune{capacity}")):
            assert depends[model_step] == {"ExportDataset", "PrepareDataset"}  # dataset version, its files
            assert depends[f"FindChampion{chain}"] == {model_step}  # looked up right before the evaluation
            assert depends[f"Evaluate{chain}"] == {model_step, "PrepareDataset", f"FindChampion{chain}"}
            assert depends[f"QualityGate{chain}"] == {f"Evaluate{chain}"}
            assert depends[f"NewModel{chain}"] == {f"Evaluate{chain}"}
            assert depends[f"RegisterModel{chain}-RegisterModel"] == {"ExportDataset", f"Evaluate{chain}"}
            assert depends[f"QualityGateFailed{chain}"] == {f"Evaluate{chain}"}
    for name, needed in depends.items():  # a chain never waits for a step of a chain not taken
        own = next((chain for chain in sorted(CHAINS, key=len, reverse=True) if name.endswith(chain)), None)
        if own is None:
            continue
        model_step = f"Tune{own.removesuffix('Tuned')}" if own.endswith("Tuned") else f"Train{own}"
        for dep in needed - {"ExportDataset", "PrepareDataset", model_step}:
            assert dep.endswith(own), (name, needed)


def test_every_reference_names_an_existing_output_property_file_or_lambda_output(definition):
    steps = steps_by_name(definition)
    for path in references(definition["Steps"]):
        if not path.startswith("Steps."):
            assert path.startswith(("Parameters.", "Execution.PipelineExecution")), path
            continue
        _, name, rest = path.split(".", 2)
        step = steps[name]
        if rest.startswith("PropertyFiles."):
            assert rest.split(".")[1] in {f["PropertyFileName"] for f in step["PropertyFiles"]}
        elif rest.startswith("ProcessingOutputConfig.Outputs["):
            output = re.search(r"\['(\w+)'\]", rest)[1]
            assert output in {o["OutputName"] for o in step["Arguments"]["ProcessingOutputConfig"]["Outputs"]}
        elif rest.startswith("OutputParameters["):
            assert re.search(r"\['(\w+)'\]", rest)[1] in {o["OutputName"] for o in step["OutputParameters"]}
        elif step["Type"] == "Tuning":
            # ListTrainingJobsForHyperParameterTuningJob's summaries, best first (the SDK's TuningStep reads it so)
            assert rest == "TrainingJobSummaries[0].TrainingJobName", path
        else:
            assert (step["Type"], rest) == ("Training", "ModelArtifacts.S3ModelArtifacts"), path
    for step in steps.values():
        for file in step.get("PropertyFiles", []):
            assert file["OutputName"] in {
                o["OutputName"] for o in step["Arguments"]["ProcessingOutputConfig"]["Outputs"]
            }


def test_the_tuned_chain_evaluates_the_tuning_jobs_best_model(definition):
    steps = steps_by_name(definition)
    for capacity in CAPACITIES:
        (model,) = [
            i["S3Input"]["S3Uri"]
            for i in steps[f"Evaluate{capacity}Tuned"]["Arguments"]["ProcessingInputs"]
            if i["InputName"] == "model"
        ]
        # the best training job of the tuning job (summaries sorted by the objective, best first) ...
        best = f"Steps.Tune{capacity}.TrainingJobSummaries[0].TrainingJobName"
        assert references(model) == [best]
        # ... where a training job of the tuning job writes its model: <S3OutputPath><job name>/output/model.tar.gz
        output = steps[f"Tune{capacity}"]["Arguments"]["TrainingJobDefinition"]["OutputDataConfig"]["S3OutputPath"]
        assert output == "s3://tag-inspect-models-123456789012-eu-west-1/training-jobs/"
        job = "pipelines-e2e0001-TuneSpot-Ab12Cd-003-9f8e7d6c"
        assert evaluated(model, {best: job}) == f"{output}{job}/output/model.tar.gz"


# --------------------------------------------------------------------------------------------------
# The quality gate
# --------------------------------------------------------------------------------------------------


def _verdict(chain: str) -> dict[str, Any]:
    return {
        "Std:JsonGet": {
            "PropertyFile": {"Get": f"Steps.Evaluate{chain}.PropertyFiles.EvaluationReport"},
            "Path": "gate.verdict",
        }
    }


def test_the_gate_follows_the_evaluations_verdict(definition):
    steps = steps_by_name(definition)
    for chain in CHAINS:
        assert steps[f"QualityGate{chain}"]["Arguments"]["Conditions"] == [
            {"Type": "Equals", "LeftValue": _verdict(chain), "RightValue": gate.FAIL}
        ]
        assert steps[f"NewModel{chain}"]["Arguments"]["Conditions"] == [
            {"Type": "Equals", "LeftValue": _verdict(chain), "RightValue": gate.REGISTER}
        ]
        files = {f["PropertyFileName"]: f for f in steps[f"Evaluate{chain}"]["PropertyFiles"]}
        assert files["EvaluationReport"] == {
            "PropertyFileName": "EvaluationReport",
            "OutputName": "evaluation",
            "FilePath": "evaluation.json",
        }
        message = json.dumps(steps[f"QualityGateFailed{chain}"]["Arguments"]["ErrorMessage"])
        assert '"Path": "gate.reason"' in message and "Quality gate failed" in message


def test_the_evaluation_gets_the_gate_settings_and_the_champion(definition):
    steps = steps_by_name(definition)
    parser = cli.parser()
    for chain in CHAINS:
        arguments = steps[f"Evaluate{chain}"]["Arguments"]["AppSpecification"]["ContainerArguments"]
        values = dict(zip(arguments[1::2], arguments[2::2], strict=True))
        assert values["--map50-95-threshold"] == {
            "Std:Join": {"On": "", "Values": [{"Get": "Parameters.MinMap50to95"}]}
        }
        assert values["--regression-margin"] == {
            "Std:Join": {"On": "", "Values": [{"Get": "Parameters.RegressionMargin"}]}
        }
        assert values["--champion-package"] == {
            "Get": f"Steps.FindChampion{chain}.OutputParameters['champion_package_arn']"
        }
        assert values["--champion-model-url"] == {
            "Get": f"Steps.FindChampion{chain}.OutputParameters['champion_model_url']"
        }
        # "none" from the lookup (no approved model yet) is what the step takes as "no champion"
        parsed = parser.parse_args([str(_sample(a)) if is_expression(a) else a for a in arguments])
        assert parsed.step == "evaluate"
        none = parser.parse_args(
            [
                gate.NO_CHAMPION if is_expression(a) and "FindChampion" in json.dumps(a) else str(_sample(a))
                for a in arguments
            ]
        )
        assert none.champion_model_url == gate.NO_CHAMPION == gate.champion_outputs(None)["champion_model_url"]


def test_the_champion_lambda_step_matches_the_handler(definition, workflow_stack):
    steps = steps_by_name(definition)
    functions = workflow_stack.resources("AWS::Lambda::Function")
    (function_id,) = [i for i, f in functions.items() if f["Properties"]["Handler"] == "training.steps.gate.handler"]
    outputs = gate.champion_outputs(gate.Champion("arn:aws:sagemaker:eu-west-1:1:model-package/g/1", "s3://b/m"))
    types = {float: "Float", str: "String", bool: "Boolean", int: "Integer"}
    for chain in CHAINS:
        step = steps[f"FindChampion{chain}"]
        assert step["FunctionArn"] == f"${{{function_id}.Arn}}"
        assert {o["OutputName"]: o["OutputType"] for o in step["OutputParameters"]} == {
            name: types[type(value)] for name, value in outputs.items()
        }
        assert step["Arguments"] == {"model_package_group": "tag-inspect-scratch-detector"}


def test_registration_points_at_the_archive_metrics_report_and_dataset_manifest(definition):
    for chain in CHAINS:
        arguments = steps_by_name(definition)[f"RegisterModel{chain}-RegisterModel"]["Arguments"]
        assert arguments["ModelPackageGroupName"] == "tag-inspect-scratch-detector"
        assert arguments["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
        (container,) = arguments["InferenceSpecification"]["Containers"]
        package = {"Get": f"Steps.Evaluate{chain}.ProcessingOutputConfig.Outputs['package'].S3Output.S3Uri"}
        assert container["ModelDataUrl"] == {"Std:Join": {"On": "", "Values": [package, "/model.tar.gz"]}}
        statistics = arguments["ModelMetrics"]["ModelQuality"]["Statistics"]
        evaluation = {"Get": f"Steps.Evaluate{chain}.ProcessingOutputConfig.Outputs['evaluation'].S3Output.S3Uri"}
        assert statistics == {
            "ContentType": "application/json",
            "S3Uri": {"Std:Join": {"On": "", "Values": [evaluation, "/evaluation.json"]}},
        }
        metadata = arguments["CustomerMetadataProperties"]
        assert metadata["evaluation_report"] == {"Std:Join": {"On": "", "Values": [evaluation, "/report/index.html"]}}
        assert metadata["dataset_manifest"]["Std:JsonGet"]["Path"] == "manifest_uri"
        assert metadata["dataset_version"]["Std:JsonGet"]["Path"] == "dataset_version"
        for name in set(gate.REGISTRY_METADATA) - {"verdict"}:
            assert metadata[name]["Std:JsonGet"]["Path"] == f"registry_metadata.{name}"
        assert metadata["tuned"] == str(chain.endswith("Tuned")).lower()
        assert len(metadata) <= 50  # CreateModelPackage takes at most 50 metadata properties


# --------------------------------------------------------------------------------------------------
# Caching, retries, spot, tuning
# --------------------------------------------------------------------------------------------------


def test_only_steps_with_content_addressed_inputs_are_cached(definition, settings):
    steps = steps_by_name(definition)
    cached = {name for name, step in steps.items() if step.get("CacheConfig")}
    assert cached == {"PrepareDataset", "TrainSpot", "TrainOnDemand", "TuneSpot", "TuneOnDemand"}
    for name in cached:
        assert steps[name]["CacheConfig"] == {"Enabled": True, "ExpireAfter": f"P{settings.training.cache_days}D"}
        # A run id in the arguments would make every run a cache miss.
        assert "Execution.PipelineExecutionId" not in json.dumps(steps[name]["Arguments"])
    # The export reads live labels, the champion lookup the live registry: never reused.
    assert "CacheConfig" not in steps["ExportDataset"] and "CacheConfig" not in steps["FindChampionSpot"]


def test_every_job_step_retries_transient_failures_with_backoff(definition):
    valid = {"Step.SERVICE_FAULT", "Step.THROTTLING", "SageMaker.JOB_INTERNAL_ERROR", "SageMaker.CAPACITY_ERROR"}
    valid |= {"SageMaker.RESOURCE_LIMIT"}
    retried = 0
    for step in pd.iter_steps(definition["Steps"]):
        if step["Type"] not in ("Processing", "Training", "Tuning", "RegisterModel"):
            assert "RetryPolicies" not in step
            continue
        policies = step["RetryPolicies"]
        kinds = {kind for policy in policies for kind in policy["ExceptionType"]}
        assert {"Step.SERVICE_FAULT", "Step.THROTTLING"} <= kinds <= valid, step["Name"]
        if step["Type"] != "RegisterModel":
            assert {"SageMaker.CAPACITY_ERROR", "SageMaker.JOB_INTERNAL_ERROR"} <= kinds
        for policy in policies:
            assert policy["BackoffRate"] >= 2 and 1 <= policy["MaxAttempts"] <= 20 and policy["IntervalSeconds"] >= 1
        retried += 1
    assert retried == 2 + 4 * 3  # export, prepare; per chain: train or tune, evaluate, register


def test_spot_and_on_demand_jobs_differ_only_in_capacity(definition, settings):
    steps = steps_by_name(definition)
    for kind, jobs in (
        ("Train", lambda s: s["Arguments"]),
        ("Tune", lambda s: s["Arguments"]["TrainingJobDefinition"]),
    ):
        spot, on_demand = (copy.deepcopy(jobs(steps[f"{kind}{s}"])) for s in (SPOT, ON_DEMAND))
        # The SDK leaves EnableManagedSpotTraining out when it is off (the API's default: off).
        assert spot.pop("EnableManagedSpotTraining") is True
        assert on_demand.pop("EnableManagedSpotTraining", False) is False
        runtime = settings.training.max_runtime_seconds
        assert spot["StoppingCondition"] == {"MaxRuntimeInSeconds": runtime, "MaxWaitTimeInSeconds": 2 * runtime}
        # CreateTrainingJob rejects MaxWaitTimeInSeconds without managed spot training.
        assert on_demand["StoppingCondition"] == {"MaxRuntimeInSeconds": runtime}
        assert spot["CheckpointConfig"] == on_demand["CheckpointConfig"]
        assert spot["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
        for arguments in (spot, on_demand):
            del arguments["StoppingCondition"]
        assert spot == on_demand


def test_training_publishes_its_metrics_and_takes_every_hyperparameter(definition, settings):
    arguments = steps_by_name(definition)["TrainSpot"]["Arguments"]
    metrics = {m["Name"]: m["Regex"] for m in arguments["AlgorithmSpecification"]["MetricDefinitions"]}
    line = "#metrics epoch=3 train_box_loss=1.25 precision=0.5 recall=0.25 mAP50=0.75 mAP50-95=0.4125"
    assert re.search(metrics["mAP50-95"], line)[1] == "0.4125"
    assert re.search(metrics["mAP50"], line)[1] == "0.75"  # not confused with mAP50-95
    assert re.search(metrics["train_box_loss"], line)[1] == "1.25"
    best = "#best precision=0.7 recall=0.6 mAP50=0.93 mAP50-95=0.66"
    assert re.search(metrics[BEST_OBJECTIVE], best)[1] == "0.66" and not re.search(metrics["mAP50-95"], best)
    hyper = arguments["HyperParameters"]
    script_mode = {"sagemaker_program", "sagemaker_submit_directory", "sagemaker_region"}
    assert set(hyper) == set(HYPERPARAMETERS) | script_mode  # the train step refuses a missing one
    assert hyper["pretrained_weights"] == {"Get": "Parameters.PretrainedWeightsS3Uri"}
    assert hyper["sagemaker_program"] == pd.JOB_ENTRY
    assert json.loads(hyper["augmentation"]) == settings.training.augmentation.model_dump()
    assert hyper["optimizer"] == settings.training.optimizer
    assert all(isinstance(v, str) or is_expression(v) for v in hyper.values())
    assert arguments["ResourceConfig"]["InstanceType"] == {"Get": "Parameters.TrainingInstanceType"}
    channels = {c["ChannelName"]: c for c in arguments["InputDataConfig"]}
    assert set(channels) == {"dataset"}  # the code comes through sagemaker_submit_directory
    assert "ContainerEntrypoint" not in arguments["AlgorithmSpecification"]


def test_tuning_searches_the_configured_ranges_for_the_best_validation_map(definition, settings):
    tuning = settings.training.tuning
    for capacity in CAPACITIES:
        step = steps_by_name(definition)[f"Tune{capacity}"]
        config = step["Arguments"]["HyperParameterTuningJobConfig"]
        assert config["Strategy"] == tuning.strategy
        assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": BEST_OBJECTIVE}
        assert config["ResourceLimits"] == {
            "MaxNumberOfTrainingJobs": {"Get": "Parameters.TuningMaxJobs"},
            "MaxParallelTrainingJobs": {"Get": "Parameters.TuningMaxParallelJobs"},
        }
        ranges = config["ParameterRanges"]
        assert {r["Name"]: r["Values"] for r in ranges["CategoricalParameterRanges"]} == {
            "model_size": tuning.ranges.model_size,
            "image_size": [str(size) for size in tuning.ranges.image_size],
        }
        (epochs,) = ranges["IntegerParameterRanges"]
        assert (epochs["Name"], epochs["MinValue"], epochs["MaxValue"]) == (
            "epochs",
            str(tuning.ranges.epochs[0]),
            str(tuning.ranges.epochs[1]),
        )
        (rate,) = ranges["ContinuousParameterRanges"]
        assert (rate["Name"], float(rate["MinValue"]), float(rate["MaxValue"]), rate["ScalingType"]) == (
            "learning_rate",
            *tuning.ranges.learning_rate,
            "Logarithmic",
        )
        job = step["Arguments"]["TrainingJobDefinition"]
        tuned = {r["Name"] for group in ranges.values() for r in group}
        # every hyperparameter reaches each training job: tuned ones from the ranges, the rest as static values
        assert set(job["StaticHyperParameters"]) | tuned == set(
            steps_by_name(definition)["TrainSpot"]["Arguments"]["HyperParameters"]
        )
        assert not tuned & set(job["StaticHyperParameters"])
        names = {m["Name"] for m in job["AlgorithmSpecification"]["MetricDefinitions"]}
        assert BEST_OBJECTIVE in names and len(names) <= 20  # a tuning job takes at most 20 metric definitions


def test_outputs_are_encrypted_with_the_model_key_and_jobs_run_as_the_job_role(definition, workflow_stack):
    roles = workflow_stack.resources("AWS::IAM::Role")
    (job_role,) = [i for i in roles if i.startswith("TrainingPipelineJobRole")]
    key = "arn:aws:kms:eu-west-1:123456789012:alias/tag-inspect-models"
    checked = 0
    for step in pd.iter_steps(definition["Steps"]):
        arguments = step.get("Arguments", {})
        if step["Type"] == "Tuning":
            arguments = arguments["TrainingJobDefinition"]
        if step["Type"] == "Processing":
            assert arguments["ProcessingOutputConfig"]["KmsKeyId"] == key
            assert arguments["RoleArn"] == f"${{{job_role}.Arn}}"
            assert arguments["AppSpecification"]["ImageUri"].startswith("763104351884.dkr.ecr.eu-west-1.amazonaws.com/")
            checked += 1
        if step["Type"] in ("Training", "Tuning"):
            assert arguments["OutputDataConfig"]["KmsKeyId"] == key
            assert arguments["RoleArn"] == f"${{{job_role}.Arn}}"
            checked += 1
    assert checked == 2 + 4 * 2


# --------------------------------------------------------------------------------------------------
# Arguments against the SageMaker API model, commands against the step code
# --------------------------------------------------------------------------------------------------

API_OF_STEP = {
    "Processing": ("CreateProcessingJob", {"ProcessingJobName"}),
    "Training": ("CreateTrainingJob", {"TrainingJobName"}),
    "Tuning": ("CreateHyperParameterTuningJob", {"HyperParameterTuningJobName"}),
    "RegisterModel": ("CreateModelPackage", set()),
}


def _scalar_problem(value: Any, shape: Shape) -> str | None:
    python = {"string": str, "integer": int, "long": int, "boolean": bool, "float": (int, float)}
    expected = python.get(shape.type_name)
    if expected and (not isinstance(value, expected) or (shape.type_name != "boolean" and isinstance(value, bool))):
        return f"expected {shape.type_name}, got {value!r}"
    enum = shape.metadata.get("enum")
    if enum and value not in enum:
        return f"{value!r} not one of {enum}"
    if shape.type_name == "integer" and not shape.metadata.get("min", 0) <= value <= shape.metadata.get("max", value):
        return f"{value} out of range"
    if shape.type_name == "string" and not shape.metadata.get("min", 0) <= len(value) <= shape.metadata.get("max", 1e9):
        return f"{len(value)} characters, not within [{shape.metadata.get('min', 0)}, {shape.metadata.get('max')}]"
    # `${...}`: a CDK token, resolved at deploy time (its value is checked where the token is made)
    if shape.type_name == "string" and "pattern" in shape.metadata and "${" not in value:
        try:
            pattern = re.compile(shape.metadata["pattern"])
        except re.error:  # Java-only syntax (\p{...}): left to the length check
            return None
        if not pattern.fullmatch(value):
            return f"{value!r} does not match {shape.metadata['pattern']}"
    return None


def _check(value: Any, shape: Shape, where: str, errors: list[str]) -> None:
    """What is wrong with `value` as `shape` (pipeline expressions are resolved at run time: accepted)."""
    if is_expression(value):
        return
    if isinstance(shape, StructureShape):
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a structure, got {value!r}")
            return
        for key, item in value.items():
            if key in shape.members:
                _check(item, shape.members[key], f"{where}.{key}", errors)
            else:
                errors.append(f"{where}: unknown member {key!r}")
    elif isinstance(shape, ListShape):
        items = value if isinstance(value, list) else [None]
        for index, item in enumerate(items):
            _check(item, shape.member, f"{where}[{index}]", errors)
    elif isinstance(shape, MapShape):
        for key, item in value.items():
            _check(item, shape.value, f"{where}.{key}", errors)
    else:
        problem = _scalar_problem(value, shape)
        if problem:
            errors.append(f"{where}: {problem}")


def test_job_step_arguments_follow_the_sagemaker_api(definition):
    model = botocore.session.get_session().get_service_model("sagemaker")
    checked = 0
    for step in pd.iter_steps(definition["Steps"]):
        if step["Type"] not in API_OF_STEP:
            continue
        operation, filled_in = API_OF_STEP[step["Type"]]
        shape = model.operation_model(operation).input_shape
        errors: list[str] = []
        _check(step["Arguments"], shape, step["Name"], errors)
        missing = set(shape.required_members) - filled_in - set(step["Arguments"])
        assert not missing, f"{step['Name']}: required {missing}"
        assert errors == [], "\n".join(errors)
        checked += 1
    assert checked == 2 + 4 * 3  # export, prepare and, per chain, train or tune, evaluate, register


def _sample(value: Any) -> Any:
    """A value as the pipeline resolves it (expressions replaced by a plausible string)."""
    if is_expression(value):
        return "1" if "Parameters.MinImages" in json.dumps(value) else "0.25"
    return value


def test_each_container_command_is_one_the_step_code_accepts(definition):
    parser = cli.parser()
    seen = set()
    for step in pd.iter_steps(definition["Steps"]):
        arguments = step.get("Arguments", {})
        spec = arguments.get("AppSpecification")
        if not spec:
            continue
        entrypoint = spec["ContainerEntrypoint"]
        assert entrypoint[:3] == ["bash", "-c", pd.BOOTSTRAP] and entrypoint[3] == "bootstrap"
        parsed = parser.parse_args([str(_sample(a)) for a in spec["ContainerArguments"]])
        seen.add(parsed.step)
        code_dir = entrypoint[4]
        assert code_dir in {i["S3Input"]["LocalPath"] for i in arguments["ProcessingInputs"]}  # where bootstrap looks
        if parsed.step == "export":
            assert parsed.class_names == ["scratch"]
            assert parsed.publish == "s3://tag-inspect-models-123456789012-eu-west-1/datasets/"
            assert parsed.output == "/opt/ml/processing/output/export"
        if parsed.step == "evaluate":
            local = {
                o["OutputName"]: o["S3Output"]["LocalPath"] for o in arguments["ProcessingOutputConfig"]["Outputs"]
            }
            assert (parsed.evaluation_output, parsed.package_output) == (local["evaluation"], local["package"])
    assert seen == {"export", "prepare", "evaluate"}  # training and tuning jobs run the job entry (script mode)


def test_training_and_tuning_jobs_run_the_job_entry_from_the_source_archive(definition, workflow_stack, tmp_path):
    """Script mode as the training toolkit runs it: the archive unpacked, its requirements at the root, the
    entry started with the code's root on the path and the hyperparameters as arguments."""
    steps = steps_by_name(definition)
    sources = set()
    for step in steps.values():
        if step["Type"] == "Training":
            hyper = step["Arguments"]["HyperParameters"]
        elif step["Type"] == "Tuning":
            hyper = step["Arguments"]["TrainingJobDefinition"]["StaticHyperParameters"]
        else:
            continue
        assert hyper["sagemaker_program"] == pd.JOB_ENTRY
        sources.add(hyper["sagemaker_submit_directory"])
    (source,) = sources
    # the training toolkit downloads the object and opens it as a gzip tar, whatever its name
    digest = re.fullmatch(r"s3://cdk-hnb659fds-assets-123456789012-eu-west-1/([0-9a-f]{64})\.gz", source)[1]
    assembly = workflow_stack.template_file.parent
    (archive,) = [path for d in (assembly, assembly.parent) for path in d.glob(f"asset.{digest}*") if path.is_file()]
    code = tmp_path / "code"
    with tarfile.open(archive) as unpacked:
        names = unpacked.getnames()
        assert {m.mtime for m in unpacked.getmembers()} == {0}  # same code, same archive, same asset hash
        unpacked.extractall(code, filter="data")
    assert {"requirements.txt", pd.JOB_ENTRY, "shared/contracts.py", "training/steps/cli.py"} <= set(names)
    # what the toolkit installs: the hashed lock file (pip checks every hash when any requirement has one)
    installed = (code / "requirements.txt").read_text()
    assert installed == (REPO_ROOT / "training" / "steps" / "requirements.lock").read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", installed)[1:]  # one per pinned package
    assert blocks and all("--hash=sha256:" in block for block in blocks)
    result = subprocess.run(
        [sys.executable, "-s", pd.JOB_ENTRY, "--model_size", "n", "--epochs", "1"],
        cwd=code,
        env={"PYTHONPATH": str(code), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    # outside a training container there are no hyperparameters: the train step says so, and nothing else broke
    assert result.returncode == 1, result.stderr
    assert "train: no hyperparameters at /opt/ml/input/config/hyperparameters.json" in result.stderr


def test_the_bootstrap_unpacks_the_step_code_asset_and_runs_the_step(workflow_stack, tmp_path):
    """The container command, run here on the asset CDK uploads (pip stubbed out: no network)."""
    assembly = workflow_stack.template_file.parent
    (pipeline,) = workflow_stack.resources("AWS::SageMaker::Pipeline").values()
    digest = re.search(r"/([0-9a-f]{64})\.zip", json.dumps(pipeline))[1]
    asset = next(d / f"asset.{digest}" for d in (assembly, assembly.parent) if (d / f"asset.{digest}").is_dir())
    assert (asset / "shared" / "contracts.py").is_file() and (
        asset / "training" / "steps" / "requirements.lock"
    ).is_file()
    assert sorted(p.name for p in (asset / "shared").iterdir()) == ["__init__.py", "contracts.py", "runtime"]
    assert sorted(p.name for p in (asset / "shared" / "runtime").iterdir()) == ["__init__.py", "model_registry.py"]
    code = tmp_path / "input" / "code"
    code.mkdir(parents=True)
    with zipfile.ZipFile(code / f"{digest}.zip", "w") as archive:
        for path in asset.rglob("*"):
            archive.write(path, path.relative_to(asset).as_posix())
    shim = tmp_path / "bin" / "python3"
    shim.parent.mkdir()
    shim.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "pip $*" >> "$PIP_LOG"; exit 0; fi\n'
        f'exec {sys.executable} -s -E "$@"\n'  # the unpacked code and installed packages, not the repository
    )
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    environment = {"PATH": f"{shim.parent}:/usr/bin:/bin", "PIP_LOG": str(tmp_path / "pip.log"), "HOME": str(tmp_path)}
    result = subprocess.run(
        ["bash", "-c", pd.BOOTSTRAP, "bootstrap", str(code), "prepare", "--help"],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: python -m training.steps.cli prepare" in result.stdout
    pip = (tmp_path / "pip.log").read_text()
    assert re.search(r"pip install .*--require-hashes -r /\S+/training/steps/requirements\.lock", pip)
    empty = tmp_path / "empty"
    empty.mkdir()
    failed = subprocess.run(
        ["bash", "-c", pd.BOOTSTRAP, "bootstrap", str(empty), "prepare"],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert failed.returncode == 1 and "no step code archive" in failed.stderr


# --------------------------------------------------------------------------------------------------
# The SDK, offline
# --------------------------------------------------------------------------------------------------

TOKENS = pd.PipelineResources(  # values as CDK hands them over: tokens, bucket names with tokens inside
    pipeline_name="tag-inspect-training",
    role_arn="${Token[TOKEN.101]}",
    model_bucket="tag-inspect-models-${Token[AWS.AccountId.7]}-${Token[AWS.Region.9]}",
    model_key_arn="arn:${Token[AWS.Partition.8]}:kms:${Token[AWS.Region.9]}:${Token[AWS.AccountId.7]}:alias/k",
    code_uri="s3://cdk-assets-${Token[AWS.AccountId.7]}/${Token[TOKEN.102]}.zip",
    source_uri="s3://cdk-assets-${Token[AWS.AccountId.7]}/${Token[TOKEN.103]}.gz",
    code_version="0123456789abcdef",
    feature_group="tag-inspect-labels",
    model_package_group="tag-inspect-scratch-detector",
    champion_function_arn="${Token[TOKEN.104]}",
    region="${Token[AWS.Region.9]}",
    training_image="${Token[TOKEN.105]}.dkr.ecr.${Token[AWS.Region.9]}.amazonaws.com/pytorch-training:2",
    processing_image="${Token[TOKEN.105]}.dkr.ecr.${Token[AWS.Region.9]}.amazonaws.com/pytorch-training:2",
)


@pytest.fixture
def offline_machine(monkeypatch, tmp_path):
    """Every socket connection and name lookup fails and is recorded, so is every request the offline
    session refuses; and SDK defaults files that would put every job in a VPC, tag it and switch
    telemetry on, where the SDK looks for them."""
    attempts: dict[str, list[str]] = {"network": [], "aws": []}

    def no_network(*args: Any, **kwargs: Any) -> None:
        attempts["network"].append(repr(args))
        raise OSError("no network at synth")

    refuse = pd._refuse_request

    def refused(event_name: str = "", **kwargs: Any) -> None:
        attempts["aws"].append(event_name.removeprefix("before-send."))
        refuse(event_name=event_name, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(pd, "_refuse_request", refused)
    defaults = tmp_path / "sagemaker-defaults.yaml"
    vpc = {"SecurityGroupIds": ["sg-0123456789abcdef0"], "Subnets": ["subnet-0123456789abcdef0"]}
    tags = [{"Key": "from-sdk-defaults", "Value": "yes"}]
    defaults.write_text(
        json.dumps(
            {
                "SchemaVersion": "1.0",
                "SageMaker": {
                    "PythonSDK": {"Modules": {"TelemetryOptOut": False}},
                    "TrainingJob": {"VpcConfig": vpc, "Tags": tags},
                    "ProcessingJob": {"NetworkConfig": {"VpcConfig": vpc}, "Tags": tags},
                    "Model": {"EnableNetworkIsolation": True},
                },
            }
        )
    )
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(defaults))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)  # nothing to find: the credential chain would go on
    monkeypatch.delenv("AWS_PROFILE", raising=False)  # to the instance metadata service (a socket)
    return attempts


def test_the_definition_is_built_offline_with_tokens_as_given(offline_machine, settings):
    """No socket, no AWS request, no SDK defaults file, no upload: what the stack does at synth."""
    from sagemaker.processing import Processor
    from sagemaker.workflow.pipeline_context import PipelineSession

    # the defaults file is where the SDK reads it: a session of its own would put every job in the VPC
    probe = Processor(
        role="arn:aws:iam::1:role/r",
        image_uri="i",
        instance_count=1,
        instance_type="ml.m5.large",
        sagemaker_session=PipelineSession(boto_session=pd.OfflineSession().boto_session),
    )
    assert probe.network_config is not None and probe.network_config.subnets == ["subnet-0123456789abcdef0"]

    definition = pd.pipeline_definition(TOKENS, settings.training, ["scratch"])
    text = json.dumps(definition)
    assert "subnet-" not in text and "from-sdk-defaults" not in text and "EnableNetworkIsolation" not in text
    steps = steps_by_name(definition)
    assert len(steps) == 2 + 1 + 2 + 4 * 7
    # the tokens are in the definition as they were given (the stack resolves them when it renders it)
    for field in ("role_arn", "champion_function_arn", "region", "training_image", "code_version"):
        assert getattr(TOKENS, field) in text, field
    code = steps["ExportDataset"]["Arguments"]["ProcessingInputs"][0]["S3Input"]["S3Uri"]
    assert code == {"Std:Join": {"On": "", "Values": [TOKENS.code_uri]}}
    assert steps["TrainSpot"]["Arguments"]["HyperParameters"]["sagemaker_submit_directory"] == TOKENS.source_uri
    assert steps["TrainSpot"]["Arguments"]["RoleArn"] == TOKENS.role_arn
    assert steps["FindChampionSpot"]["FunctionArn"] == TOKENS.champion_function_arn
    assert f'"{pd.SDK_REGION}"' not in text and f".{pd.SDK_REGION}." not in text  # the SDK's own region
    # Nothing left the process. The only requests the SDK tried are its telemetry's account lookups, refused
    # before anything was sent (it then gives up: it sends telemetry only for regions it knows).
    assert offline_machine["network"] == []
    assert set(offline_machine["aws"]) <= {"sts.GetCallerIdentity"}, offline_machine["aws"]


def test_the_offline_session_refuses_every_aws_request():
    session = pd.OfflineSession()
    with pytest.raises(pd.OfflineSessionError, match=r"must not call AWS, but the SDK sent sagemaker\.ListPipelines"):
        session.sagemaker_client.list_pipelines()
    with pytest.raises(pd.OfflineSessionError, match=r"sent sts\.GetCallerIdentity"):
        session.boto_session.client("sts").get_caller_identity()
    with pytest.raises(pd.OfflineSessionError, match="default bucket"):
        session.default_bucket()
    assert session.expand_role("${Token[TOKEN.1]}") == "${Token[TOKEN.1]}"  # not looked up in IAM
    assert not session.sagemaker_config  # no SDK defaults


def test_only_the_training_stack_imports_the_sdk_and_it_leaves_the_app_as_it_was():
    """The apps' modules load without the SDK (labeling and edge synth do not pay for it); building the
    training definition loads it quietly, and synth errors keep Python's own traceback."""
    script = (
        "import sys\n"
        "import app, training.stacks, training.training_pipeline\n"
        "assert 'sagemaker' not in sys.modules, 'the SDK was imported by a module of the apps'\n"
        "with __import__('training.quiet_sdk').quiet_sdk.quiet_sdk():\n"
        "    import training.pipeline_definition\n"
        "assert 'sagemaker.workflow.pipeline' in sys.modules\n"
        "assert sys.excepthook is sys.__excepthook__, sys.excepthook\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no SDK notes, no deprecation warning
