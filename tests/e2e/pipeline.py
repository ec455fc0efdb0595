"""Run the training app's SageMaker pipeline definition on this machine, step by step, with its own code.

The definition is the one the training stack deploys (`PipelineDefinitionBody` of the synthesized
template). Its expressions (`Get`, `Std:Join`, `Std:JsonGet`, conditions) are evaluated as SageMaker
evaluates them; each step runs what SageMaker would start:

* Processing steps run `python -m training.steps.cli <arguments from the definition>` (in process) in a
  folder laid out like the container (`/opt/ml/...` rebased under a work folder); Training steps run
  what their script-mode entry (`sagemaker_program`, training/steps/job.py) runs: the `train` step.
  Inputs are copied from (moto) S3 to their `LocalPath`s; outputs are uploaded from theirs to their
  S3 URIs, a training job's model as `<S3OutputPath><job>/output/model.tar.gz`.
* The Lambda step runs the handler its function names in the template.
* RegisterModel calls CreateModelPackage (moto) with the evaluated arguments; Fail raises.

Only what the definition says is used: a step whose `LocalPath` disagrees with the CLI's default, or
an expression naming a step or property file that does not exist, fails the run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.templates import ACCOUNT, REGION, Template

CONTAINER_ROOTS = ("/opt/ml/", "/tmp/")
Trainer = Callable[[list[str]], int]


class PipelineFailed(Exception):
    """The pipeline execution failed (a step's error, or a Fail step); the message says which step."""


def _cli_main(argv: list[str]) -> int:
    from training.steps import cli

    return cli.main(argv)


def _cli_defaults(step: str) -> dict[str, str]:
    """Option -> default of a CLI step whose default is a path inside the container."""
    from training.steps import cli

    subparsers = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    found = {}
    for action in subparsers.choices[step]._actions:
        if isinstance(action.default, str) and action.default.startswith(CONTAINER_ROOTS):
            found[action.option_strings[0]] = action.default
    return found


@dataclass
class PipelineRun:
    """One execution of the definition with `parameters` overriding the defaults."""

    definition: dict[str, Any]
    template: Template  # the training workflow stack (the Lambda step's function)
    s3: Any
    sagemaker: Any
    work: Path
    parameters: Mapping[str, Any] = field(default_factory=dict)
    execution_id: str = "e2e0001"
    trainer: Trainer | None = None  # how a Training step runs its command (None: the step code; or reuse a model)
    after_step: Callable[[str, PipelineRun], None] = lambda name, run: None
    steps_run: list[str] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)  # model package ARNs

    def __post_init__(self) -> None:
        declared = {p["Name"]: p["DefaultValue"] for p in self.definition["Parameters"]}
        unknown = sorted(set(self.parameters) - set(declared))
        if unknown:
            raise PipelineFailed(f"parameters {unknown} are not declared by the pipeline ({sorted(declared)})")
        self.values = {**declared, **self.parameters}
        self.outputs: dict[str, dict[str, Any]] = {}  # step -> its properties (as SageMaker exposes them)
        self.local_outputs: dict[str, dict[str, Path]] = {}  # step -> output name -> folder
        self.property_files: dict[str, dict[str, Path]] = {}

    @property
    def execution_arn(self) -> str:
        return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/e2e/execution/{self.execution_id}"

    # -- expressions -------------------------------------------------------------------------------------
    def value(self, expression: Any) -> Any:
        if isinstance(expression, list):
            return [self.value(item) for item in expression]
        if not isinstance(expression, dict):
            return expression
        if set(expression) == {"Get"}:
            return self._get(expression["Get"])
        if set(expression) == {"Std:Join"}:
            join = expression["Std:Join"]
            return join["On"].join(self._text(self.value(v)) for v in join["Values"])
        if set(expression) == {"Std:JsonGet"}:
            getter = expression["Std:JsonGet"]
            match = re.fullmatch(r"Steps\.([^.]+)\.PropertyFiles\.([^.]+)", getter["PropertyFile"]["Get"])
            if not match or match[2] not in self.property_files.get(match[1], {}):
                raise PipelineFailed(f"property file {getter['PropertyFile']['Get']} was not produced")
            document: Any = json.loads(self.property_files[match[1]][match[2]].read_text(encoding="utf-8"))
            for part in getter["Path"].split("."):
                document = document[part]
            return document
        return {key: self.value(item) for key, item in expression.items()}

    @staticmethod
    def _text(value: Any) -> str:
        return json.dumps(value) if isinstance(value, bool) else str(value)

    def _get(self, path: str) -> Any:
        if path.startswith("Parameters."):
            return self.values[path.removeprefix("Parameters.")]
        if path == "Execution.PipelineExecutionId":
            return self.execution_id
        if path == "Execution.PipelineExecutionArn":
            return self.execution_arn
        match = re.fullmatch(r"Steps\.([^.]+)\.(.+)", path)
        if not match or match[1] not in self.outputs:
            raise PipelineFailed(f"{path}: step not run (yet)")
        properties = self.outputs[match[1]]
        if match[2] not in properties:
            raise PipelineFailed(f"{path}: the step has no such property ({sorted(properties)})")
        return properties[match[2]]

    # -- S3 ----------------------------------------------------------------------------------------------
    def _download(self, uri: str, target: Path) -> None:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        target.mkdir(parents=True, exist_ok=True)
        listed = self.s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
        exact = [item for item in listed if item["Key"] == key]
        if exact:  # an object: into the folder under its file name
            self.s3.download_file(bucket, key, str(target / Path(key).name))
            return
        prefix = key if key.endswith("/") or not key else key + "/"
        found = [item["Key"] for item in listed if item["Key"].startswith(prefix)]
        if not found:
            raise PipelineFailed(f"input {uri} is empty")
        for name in found:
            destination = target / name[len(prefix) :]
            destination.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(bucket, name, str(destination))

    def _upload(self, folder: Path, uri: str) -> None:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        prefix = key.rstrip("/") + "/"
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.s3.upload_file(str(path), bucket, prefix + path.relative_to(folder).as_posix())

    def _rebase(self, root: Path, container_path: str) -> Path:
        return root / container_path.lstrip("/")

    # -- steps -------------------------------------------------------------------------------------------
    def run(self) -> None:
        self._run_steps(self.definition["Steps"])

    def _run_steps(self, steps: list[dict[str, Any]]) -> None:
        for step in steps:
            kind, name = step["Type"], step["Name"]
            self.steps_run.append(name)
            runner = {
                "Processing": self._processing,
                "Training": self._training,
                "Lambda": self._lambda,
                "Condition": self._condition,
                "RegisterModel": self._register,
                "Fail": self._fail,
            }.get(kind)
            if runner is None:
                raise PipelineFailed(f"step {name}: type {kind} is not supported here")
            runner(step)
            self.after_step(name, self)

    def _container(self, step: dict[str, Any], cli_step: str, root: Path, arguments: list[str]) -> None:
        extra: list[str] = []
        for option, default in _cli_defaults(cli_step).items():
            extra += [option, str(self._rebase(root, default))]
        if cli_step == "train":
            extra += ["--workers", "0"]  # no data loader processes on a small shared machine
        argv = [cli_step, *arguments[1:], *extra]
        errors = io.StringIO()  # the step's failure reason, as SageMaker shows it
        with contextlib.redirect_stderr(errors):
            status = (self.trainer or _cli_main)(argv) if cli_step == "train" else _cli_main(argv)
        if status != 0:
            reason = errors.getvalue().strip().splitlines()[-1:] or [f"exit status {status}"]
            raise PipelineFailed(f"step {step['Name']} failed: {reason[0]}")

    def _processing(self, step: dict[str, Any]) -> None:
        name, arguments = step["Name"], step["Arguments"]
        root = self.work / name
        for channel in arguments["ProcessingInputs"]:
            if channel["InputName"] == "code":
                continue  # this very repository is the step code
            source = channel["S3Input"]
            self._download(str(self.value(source["S3Uri"])), self._rebase(root, source["LocalPath"]))
        outputs = {o["OutputName"]: o["S3Output"] for o in arguments["ProcessingOutputConfig"]["Outputs"]}
        for output in outputs.values():
            self._rebase(root, output["LocalPath"]).mkdir(parents=True, exist_ok=True)
        command = [str(self._text(self.value(a))) for a in arguments["AppSpecification"]["ContainerArguments"]]
        self._container(step, command[0], root, command)
        properties: dict[str, Any] = {}
        for output_name, output in outputs.items():
            uri = str(self.value(output["S3Uri"]))
            self._upload(self._rebase(root, output["LocalPath"]), uri)
            properties[f"ProcessingOutputConfig.Outputs['{output_name}'].S3Output.S3Uri"] = uri
        self.outputs[name] = properties
        self.property_files[name] = {
            p["PropertyFileName"]: self._rebase(root, outputs[p["OutputName"]]["LocalPath"]) / p["FilePath"]
            for p in step.get("PropertyFiles", [])
        }

    def _training(self, step: dict[str, Any]) -> None:
        name, arguments = step["Name"], step["Arguments"]
        root = self.work / name
        hyperparameters = {k: self._text(self.value(v)) for k, v in arguments["HyperParameters"].items()}
        config = self._rebase(root, "/opt/ml/input/config/hyperparameters.json")
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(hyperparameters), encoding="utf-8")
        for channel in arguments["InputDataConfig"]:
            if channel["ChannelName"] == "code":
                continue
            uri = str(self.value(channel["DataSource"]["S3DataSource"]["S3Uri"]))
            self._download(uri, self._rebase(root, f"/opt/ml/input/data/{channel['ChannelName']}"))
        from training.pipeline_definition import JOB_ENTRY

        if hyperparameters.get("sagemaker_program") != JOB_ENTRY:  # script mode: the toolkit runs this entry
            raise PipelineFailed(f"step {name}: runs {hyperparameters.get('sagemaker_program')}, not {JOB_ENTRY}")
        self._container(step, "train", root, ["train"])  # what the entry runs
        # SageMaker packs /opt/ml/model as <S3OutputPath><job name>/output/model.tar.gz.
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            model_dir = self._rebase(root, "/opt/ml/model")
            for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
                archive.add(path, arcname=path.relative_to(model_dir).as_posix())
        output = str(self.value(arguments["OutputDataConfig"]["S3OutputPath"]))
        bucket, _, prefix = output.removeprefix("s3://").partition("/")
        key = f"{prefix}pipelines-{self.execution_id}-{name}/output/model.tar.gz"
        self.s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
        self.outputs[name] = {"ModelArtifacts.S3ModelArtifacts": f"s3://{bucket}/{key}"}

    def _lambda(self, step: dict[str, Any]) -> None:
        from training.steps import gate

        handlers: dict[str, Callable[[dict[str, Any], Any], dict[str, Any]]] = {
            "training.steps.gate.handler": gate.handler
        }
        arn = str(self.value(step["FunctionArn"]))
        functions = {
            self.template.arn(lid): props["Handler"]
            for lid, props in (
                (lid, r["Properties"]) for lid, r in self.template.of_type("AWS::Lambda::Function").items()
            )
        }
        if arn not in functions or functions[arn] not in handlers:
            raise PipelineFailed(f"step {step['Name']}: function {arn} is not a known function of the training stack")
        result = handlers[functions[arn]](self.value(step["Arguments"]), None)
        declared = {o["OutputName"] for o in step.get("OutputParameters", [])}
        missing = declared - set(result)
        if missing:
            raise PipelineFailed(f"step {step['Name']}: the function returned no {sorted(missing)}")
        self.outputs[step["Name"]] = {f"OutputParameters['{k}']": result[k] for k in declared}

    def _condition(self, step: dict[str, Any]) -> None:
        operators: dict[str, Callable[[Any, Any], bool]] = {
            "GreaterThanOrEqualTo": lambda a, b: float(a) >= float(b),
            "GreaterThan": lambda a, b: float(a) > float(b),
            "LessThanOrEqualTo": lambda a, b: float(a) <= float(b),
            "LessThan": lambda a, b: float(a) < float(b),
            "Equals": lambda a, b: a == b,
        }
        arguments = step["Arguments"]
        holds = all(
            operators[c["Type"]](self.value(c["LeftValue"]), self.value(c["RightValue"]))
            for c in arguments["Conditions"]
        )
        self.outputs[step["Name"]] = {"Outcome": holds}
        self._run_steps(arguments["IfSteps"] if holds else arguments["ElseSteps"])

    def _register(self, step: dict[str, Any]) -> None:
        request = self.value(step["Arguments"])
        created = self.sagemaker.create_model_package(**request)
        self.registered.append(created["ModelPackageArn"])
        self.outputs[step["Name"]] = {"ModelPackageArn": created["ModelPackageArn"]}

    def _fail(self, step: dict[str, Any]) -> None:
        raise PipelineFailed(f"step {step['Name']}: {self.value(step['Arguments']['ErrorMessage'])}")


def copy_trained_model(model_dir: Path) -> Trainer:
    """A trainer that hands over an already trained model (drift checks reuse the real run's model)."""

    def train(argv: list[str]) -> int:
        destination = Path(argv[argv.index("--model-dir") + 1])
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(destination)
        shutil.copytree(model_dir, destination)
        return 0

    return train
