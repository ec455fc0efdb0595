"""The SageMaker pipeline definition as synthesized: parameters, steps, dependencies, the gate, caching, retries.

Every job step's arguments are checked against botocore's model of the API SageMaker calls for it
(CreateProcessingJob, CreateTrainingJob, CreateModelPackage), and every container command against
the step code's own command line.
"""

from __future__ import annotations

import copy
import json
import re
import stat
import subprocess
import sys
import zipfile
from typing import Any

import botocore.session
from botocore.model import ListShape, MapShape, Shape, StructureShape

from training import pipeline_definition as pd
from training.steps import cli, gate
from training.steps.evaluate import EvaluationReport

SPOT, ON_DEMAND = "Spot", "OnDemand"
EXPRESSIONS = ("Get", "Std:Join", "Std:JsonGet")


def steps_by_name(definition) -> dict[str, dict]:
    return {step["Name"]: step for step in pd.iter_steps(definition["Steps"])}


def is_expression(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in EXPRESSIONS


def references(value: Any) -> list[str]:
    """Every `Get` path inside a value (property references, parameters, execution variables)."""
    text = json.dumps(value)
    return re.findall(r'"Get": "([^"]+)"', text)


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
        "TrainingInstanceType": ("String", training.training_instance_type),
        "ProcessingInstanceType": ("String", training.processing_instance_type),
        "UseSpotInstances": ("Boolean", training.use_spot),
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
        chain = capacity[branch]
        assert [(s["Name"], s["Type"]) for s in chain] == [
            (f"Train{suffix}", "Training"),
            (f"Evaluate{suffix}", "Processing"),
            (f"RegressionBaseline{suffix}", "Lambda"),
            (f"QualityGate{suffix}", "Condition"),
        ]
        gate_step = chain[3]["Arguments"]
        assert [(s["Name"], s["Type"]) for s in gate_step["IfSteps"]] == [(f"RegisterModel{suffix}", "RegisterModel")]
        assert [(s["Name"], s["Type"]) for s in gate_step["ElseSteps"]] == [(f"QualityGateFailed{suffix}", "Fail")]
    names = [s["Name"] for s in pd.iter_steps(definition["Steps"])]
    assert len(names) == len(set(names)) == 15
    assert all(re.fullmatch(r"[A-Za-z0-9\-_]{1,64}", name) for name in names)


def test_data_dependencies_chain_the_steps(definition):
    steps = steps_by_name(definition)
    depends = {name: step_references(step) for name, step in steps.items()}
    assert depends["ExportDataset"] == set()
    assert depends["PrepareDataset"] == {"ExportDataset"}
    for suffix in (SPOT, ON_DEMAND):
        assert depends[f"Train{suffix}"] == {"ExportDataset", "PrepareDataset"}  # dataset version, its files
        assert depends[f"Evaluate{suffix}"] == {f"Train{suffix}", "PrepareDataset"}
        assert depends[f"RegressionBaseline{suffix}"] == {f"Evaluate{suffix}"}  # looked up right before the gate
        assert depends[f"QualityGate{suffix}"] == {f"Evaluate{suffix}", f"RegressionBaseline{suffix}"}
        assert depends[f"RegisterModel{suffix}"] == {"ExportDataset", f"Evaluate{suffix}"}
        assert depends[f"QualityGateFailed{suffix}"] == {f"Evaluate{suffix}", f"RegressionBaseline{suffix}"}
    other = {SPOT: ON_DEMAND, ON_DEMAND: SPOT}
    for name, needed in depends.items():  # a branch never waits for a step of the branch not taken
        for suffix in (SPOT, ON_DEMAND):
            if name.endswith(suffix):
                assert not any(dep.endswith(other[suffix]) for dep in needed), (name, needed)


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
        else:
            assert (step["Type"], rest) == ("Training", "ModelArtifacts.S3ModelArtifacts"), path
    for step in steps.values():
        for file in step.get("PropertyFiles", []):
            assert file["OutputName"] in {
                o["OutputName"] for o in step["Arguments"]["ProcessingOutputConfig"]["Outputs"]
            }


# --------------------------------------------------------------------------------------------------
# The quality gate
# --------------------------------------------------------------------------------------------------


def test_the_gate_registers_only_above_the_threshold_and_the_regression_floor(definition):
    steps = steps_by_name(definition)
    for suffix in (SPOT, ON_DEMAND):
        metric = {
            "Std:JsonGet": {
                "PropertyFile": {"Get": f"Steps.Evaluate{suffix}.PropertyFiles.EvaluationReport"},
                "Path": "gate_metric.value",
            }
        }
        assert steps[f"QualityGate{suffix}"]["Arguments"]["Conditions"] == [
            {"Type": "GreaterThanOrEqualTo", "LeftValue": metric, "RightValue": {"Get": "Parameters.MinMap50to95"}},
            {
                "Type": "GreaterThanOrEqualTo",
                "LeftValue": metric,
                "RightValue": {"Get": f"Steps.RegressionBaseline{suffix}.OutputParameters['regression_floor']"},
            },
        ]
        files = {f["PropertyFileName"]: f for f in steps[f"Evaluate{suffix}"]["PropertyFiles"]}
        assert files["EvaluationReport"] == {
            "PropertyFileName": "EvaluationReport",
            "OutputName": "evaluation",
            "FilePath": "evaluation.json",
        }
        message = json.dumps(steps[f"QualityGateFailed{suffix}"]["Arguments"]["ErrorMessage"])
        for part in ("gate_metric.value", "Parameters.MinMap50to95", "regression_floor", "baseline_package_arn"):
            assert part in message


def test_the_gate_reads_a_path_the_evaluation_report_has(definition):
    report = EvaluationReport(
        metrics={"precision": 0.8, "recall": 0.7, "mAP50": 0.75, "mAP50-95": 0.52},
        split="test",
        images=10,
        instances=14,
        input_size=640,
        confidence_threshold=0.25,
        iou_threshold=0.45,
        dataset_version="ds-0",
        class_names=("scratch",),
    ).to_json()
    gates = [
        s
        for name, s in steps_by_name(definition).items()
        if name.startswith("QualityGate") and s["Type"] == "Condition"
    ]
    paths = set(re.findall(r'"Path": "([^"]+)"', json.dumps([step["Arguments"]["Conditions"] for step in gates])))
    assert paths == {"gate_metric.value"}
    for path in paths:
        value: Any = report
        for key in path.split("."):
            value = value[key]
        assert value == 0.52


def test_the_baseline_lambda_step_matches_the_handler(definition, workflow_stack):
    steps = steps_by_name(definition)
    functions = workflow_stack.resources("AWS::Lambda::Function")
    (baseline_id,) = [i for i, f in functions.items() if f["Properties"]["Handler"] == "gate.handler"]
    outputs = gate.baseline_outputs(None, 0.02)
    types = {float: "Float", str: "String", bool: "Boolean", int: "Integer"}
    for suffix in (SPOT, ON_DEMAND):
        step = steps[f"RegressionBaseline{suffix}"]
        assert step["FunctionArn"] == f"${{{baseline_id}.Arn}}"
        assert {o["OutputName"]: o["OutputType"] for o in step["OutputParameters"]} == {
            name: types[type(value)] for name, value in outputs.items()
        }
        assert step["Arguments"] == {
            "model_package_group": "tag-inspect-scratch-detector",
            "regression_margin": {"Get": "Parameters.RegressionMargin"},
        }
        assert step["DependsOn"] == [f"Evaluate{suffix}"]


def test_registration_points_at_the_archive_metrics_and_dataset_manifest(definition):
    for suffix in (SPOT, ON_DEMAND):
        arguments = steps_by_name(definition)[f"RegisterModel{suffix}"]["Arguments"]
        assert arguments["ModelPackageGroupName"] == "tag-inspect-scratch-detector"
        assert arguments["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
        (container,) = arguments["InferenceSpecification"]["Containers"]
        package = {"Get": f"Steps.Evaluate{suffix}.ProcessingOutputConfig.Outputs['package'].S3Output.S3Uri"}
        assert container["ModelDataUrl"] == {"Std:Join": {"On": "", "Values": [package, "/model.tar.gz"]}}
        statistics = arguments["ModelMetrics"]["ModelQuality"]["Statistics"]
        evaluation = {"Get": f"Steps.Evaluate{suffix}.ProcessingOutputConfig.Outputs['evaluation'].S3Output.S3Uri"}
        assert statistics == {
            "ContentType": "application/json",
            "S3Uri": {"Std:Join": {"On": "", "Values": [evaluation, "/evaluation.json"]}},
        }
        metadata = arguments["CustomerMetadataProperties"]
        assert metadata["dataset_manifest"]["Std:JsonGet"]["Path"] == "manifest_uri"
        assert metadata["dataset_version"]["Std:JsonGet"]["Path"] == "dataset_version"
        assert "gate_metric.value" in json.dumps(metadata["mAP50-95"])


# --------------------------------------------------------------------------------------------------
# Caching, retries, spot
# --------------------------------------------------------------------------------------------------


def test_only_steps_with_content_addressed_inputs_are_cached(definition, settings):
    steps = steps_by_name(definition)
    cached = {name for name, step in steps.items() if step.get("CacheConfig")}
    assert cached == {"PrepareDataset", "TrainSpot", "TrainOnDemand"}
    for name in cached:
        assert steps[name]["CacheConfig"] == {"Enabled": True, "ExpireAfter": f"P{settings.training.cache_days}D"}
        # A run id in the arguments would make every run a cache miss.
        assert "Execution.PipelineExecutionId" not in json.dumps(steps[name]["Arguments"])
    # The export reads live labels, the baseline the live registry: never reused.
    assert "CacheConfig" not in steps["ExportDataset"] and "CacheConfig" not in steps["RegressionBaselineSpot"]


def test_every_job_step_retries_transient_failures_with_backoff(definition):
    valid = {"Step.SERVICE_FAULT", "Step.THROTTLING", "SageMaker.JOB_INTERNAL_ERROR", "SageMaker.CAPACITY_ERROR"}
    valid |= {"SageMaker.RESOURCE_LIMIT"}
    for step in pd.iter_steps(definition["Steps"]):
        if step["Type"] not in ("Processing", "Training", "RegisterModel"):
            assert "RetryPolicies" not in step
            continue
        policies = step["RetryPolicies"]
        kinds = {kind for policy in policies for kind in policy["ExceptionType"]}
        assert {"Step.SERVICE_FAULT", "Step.THROTTLING"} <= kinds <= valid, step["Name"]
        if step["Type"] != "RegisterModel":
            assert {"SageMaker.CAPACITY_ERROR", "SageMaker.JOB_INTERNAL_ERROR"} <= kinds
        for policy in policies:
            assert policy["BackoffRate"] >= 2 and 1 <= policy["MaxAttempts"] <= 20 and policy["IntervalSeconds"] >= 1


def test_spot_and_on_demand_training_differ_only_in_capacity(definition, settings):
    steps = steps_by_name(definition)
    spot, on_demand = (copy.deepcopy(steps[f"Train{s}"]["Arguments"]) for s in (SPOT, ON_DEMAND))
    assert spot["EnableManagedSpotTraining"] is True and on_demand["EnableManagedSpotTraining"] is False
    runtime = settings.training.max_runtime_seconds
    assert spot["StoppingCondition"] == {"MaxRuntimeInSeconds": runtime, "MaxWaitTimeInSeconds": 2 * runtime}
    # CreateTrainingJob rejects MaxWaitTimeInSeconds without managed spot training.
    assert on_demand["StoppingCondition"] == {"MaxRuntimeInSeconds": runtime}
    assert spot["CheckpointConfig"] == on_demand["CheckpointConfig"]
    assert spot["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
    for arguments in (spot, on_demand):
        del arguments["EnableManagedSpotTraining"], arguments["StoppingCondition"]
    assert spot == on_demand


def test_training_publishes_its_metrics_and_takes_the_hyperparameters(definition):
    arguments = steps_by_name(definition)["TrainSpot"]["Arguments"]
    metrics = {m["Name"]: m["Regex"] for m in arguments["AlgorithmSpecification"]["MetricDefinitions"]}
    line = "#metrics epoch=3 train_box_loss=1.25 precision=0.5 recall=0.25 mAP50=0.75 mAP50-95=0.4125"
    assert re.search(metrics["mAP50-95"], line)[1] == "0.4125"
    assert re.search(metrics["mAP50"], line)[1] == "0.75"  # not confused with mAP50-95
    assert re.search(metrics["train_box_loss"], line)[1] == "1.25"
    hyper = arguments["HyperParameters"]
    assert set(hyper) == {
        "model_size",
        "epochs",
        "image_size",
        "batch_size",
        "onnx_opset",
        "pretrained_weights",
        "seed",
    }
    assert hyper["pretrained_weights"] == {"Get": "Parameters.PretrainedWeightsS3Uri"}
    assert all(isinstance(v, str) or is_expression(v) for v in hyper.values())
    assert arguments["ResourceConfig"]["InstanceType"] == {"Get": "Parameters.TrainingInstanceType"}
    channels = {c["ChannelName"]: c for c in arguments["InputDataConfig"]}
    assert set(channels) == {"code", "dataset"}


def test_outputs_are_encrypted_with_the_model_key_and_jobs_run_as_the_job_role(definition, workflow_stack):
    roles = workflow_stack.resources("AWS::IAM::Role")
    (job_role,) = [i for i in roles if i.startswith("TrainingPipelineJobRole")]
    key = "arn:aws:kms:eu-west-1:123456789012:alias/tag-inspect-models"
    for step in pd.iter_steps(definition["Steps"]):
        arguments = step.get("Arguments", {})
        if step["Type"] == "Processing":
            assert arguments["ProcessingOutputConfig"]["KmsKeyId"] == key
            assert arguments["RoleArn"] == f"${{{job_role}.Arn}}"
            assert arguments["AppSpecification"]["ImageUri"].startswith("763104351884.dkr.ecr.eu-west-1.amazonaws.com/")
        if step["Type"] == "Training":
            assert arguments["OutputDataConfig"]["KmsKeyId"] == key
            assert arguments["RoleArn"] == f"${{{job_role}.Arn}}"


# --------------------------------------------------------------------------------------------------
# Arguments against the SageMaker API model, commands against the step code
# --------------------------------------------------------------------------------------------------

API_OF_STEP = {
    "Processing": ("CreateProcessingJob", {"ProcessingJobName"}),
    "Training": ("CreateTrainingJob", {"TrainingJobName"}),
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
    assert checked == 8  # export, prepare and, per capacity, train, evaluate, register


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
        spec = arguments.get("AppSpecification") or arguments.get("AlgorithmSpecification")
        if not spec:
            continue
        entrypoint = spec["ContainerEntrypoint"]
        assert entrypoint[:3] == ["bash", "-c", pd.BOOTSTRAP] and entrypoint[3] == "bootstrap"
        parsed = parser.parse_args([str(_sample(a)) for a in spec["ContainerArguments"]])
        seen.add(parsed.step)
        code_dir = entrypoint[4]
        inputs = arguments.get("ProcessingInputs") or [
            {"S3Input": {"LocalPath": f"/opt/ml/input/data/{c['ChannelName']}"}} for c in arguments["InputDataConfig"]
        ]
        assert code_dir in {i["S3Input"]["LocalPath"] for i in inputs}  # the code input is where bootstrap looks
        if parsed.step == "export":
            assert parsed.class_names == ["scratch"]
            assert parsed.publish == "s3://tag-inspect-models-123456789012-eu-west-1/datasets/"
            assert parsed.output == "/opt/ml/processing/output/export"
        if parsed.step == "evaluate":
            local = {
                o["OutputName"]: o["S3Output"]["LocalPath"] for o in arguments["ProcessingOutputConfig"]["Outputs"]
            }
            assert (parsed.evaluation_output, parsed.package_output) == (local["evaluation"], local["package"])
    assert seen == {"export", "prepare", "train", "evaluate"}


def test_the_bootstrap_unpacks_the_step_code_asset_and_runs_the_step(workflow_stack, tmp_path):
    """The container command, run here on the asset CDK uploads (pip stubbed out: no network)."""
    assembly = workflow_stack.template_file.parent
    (pipeline,) = workflow_stack.resources("AWS::SageMaker::Pipeline").values()
    digest = re.search(r"/([0-9a-f]{64})\.zip", json.dumps(pipeline))[1]
    asset = next(d / f"asset.{digest}" for d in (assembly, assembly.parent) if (d / f"asset.{digest}").is_dir())
    assert (asset / "shared" / "contracts.py").is_file() and (
        asset / "training" / "steps" / "requirements.lock"
    ).is_file()
    assert sorted(p.name for p in (asset / "shared").iterdir()) == ["__init__.py", "contracts.py"]
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
