"""Run the synthesized edge deployment state machine in moto's Step Functions executor, with the real functions.

* The definition comes from the synthesized template; every Wait is shortened to 0 s.
* ResolveModelPackage, the stage steps (BeginStage, CreateDeployment, CheckRollout, CheckServing, CheckHealth,
  RollBackStage, CheckRollback) run their real handlers, in process (the suite's harness,
  `tests/helpers/state_machine.py`), against moto's SageMaker model registry, `FakeGreengrass` (Greengrass v2
  deployments, their IoT jobs and the thing groups: moto has no Greengrass v2) and `FakeCloudWatch` (the
  devices' metrics: a device reports the model version its group's latest deployment carries, unless a
  test says its model does not load, and healthy figures unless a test gives others). Every request is
  checked against botocore's model of the service.
* The functions' clock moves on 5 minutes per look, so that waits for devices run out in a test.
* PrepareModelComponent and DescribeModelComponent are the component steps (tested on their own with
  Stubber and moto): here they answer the model component version of the package, DEPLOYABLE.
* Several executions may run at once, each in moto's executor thread, and a test can hold one of them
  right before it reaches Greengrass (`FakeGreengrass.before_create`) to play a race out in a chosen order.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import botocore.session
from botocore.exceptions import ClientError
from botocore.validate import validate_parameters

from edge_deployment.runtime import handlers
from edge_deployment.runtime.config import ENVIRONMENT_VARIABLE
from edge_deployment.runtime_bundle import HANDLER_MODULE
from tests.edge_deployment.conftest import ACCOUNT, GROUP, REGION
from tests.helpers import asl
from tests.helpers.lambda_context import LambdaContext
from tests.helpers.state_machine import MotoStateMachine, function_arn, lambda_handlers
from tests.helpers.strict_params import check_request

MODEL_COMPONENT = "com.example.tag-inspection.ScratchModel"
INFERENCE_COMPONENT = "com.example.tag-inspection.ScratchDetector"
INFERENCE_VERSION = "1.0.4242"
TOPIC = "tag-inspect-edge-deployment-notifications"
FAKE_DESCRIBE = "FakeDescribeComponent"
DEVICES = ("line-1-cam-1", "line-1-cam-2")
PILOT_GROUP, FLEET_GROUP = "tag-inspection-line-1-pilot", "tag-inspection-line-1"  # the example's stages
PILOT_DEVICES = ("line-1-pilot-cam",)
# What a healthy device's metrics say over a soak (runtime/telemetry.py names): 10 % flagged, as on its test split.
HEALTHY = {
    "Frames": 600.0,
    "DefectFrames": 60.0,
    "FramesFailedTotal": 0.0,
    "LatencyMs": 45.0,
    "ExpectedEmptyShare": 0.9,
}
OLD_FAILURES = 250.0  # frames a device failed before the stage (its total counts from the component's start)
_SESSION = botocore.session.get_session()
# The edge workflow's functions that run for real here (prepare_model's component steps are tested alone).
WORKFLOW_HANDLERS = (
    "resolve",
    "begin_stage",
    "create_deployment",
    "check_rollout",
    "check_serving",
    "check_health",
    "roll_back_stage",
    "check_rollback",
)


def _validate(service: str, operation: str, params: Mapping[str, Any]) -> None:
    model = _SESSION.get_service_model(service).operation_model(operation)
    validate_parameters(dict(params), model.input_shape)
    check_request(params, model)


class FakeGreengrass:
    """Greengrass v2 deployments to thing groups, and the continuous IoT job of each (`iot()`).

    As in the service, one deployment is the latest for a target: creating another revises it, and the
    IoT job of the one before is cancelled. A job's devices succeed after `polls_to_finish` looks.
    """

    def __init__(self, *, polls_to_finish: int = 2, groups: Mapping[str, Sequence[str]] | None = None) -> None:
        self.polls_to_finish = polls_to_finish
        # thing group -> its devices
        self.groups = dict(groups) if groups is not None else {PILOT_GROUP: PILOT_DEVICES, FLEET_GROUP: DEVICES}
        self.deleted_components: set[str] = set()
        self.deployments: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.latest: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self.created: list[dict[str, Any]] = []
        self.before_create: Callable[[Mapping[str, Any]], None] = lambda request: None
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # -- greengrassv2 -------------------------------------------------------------------------------------
    def create_deployment(self, **request: Any) -> dict[str, Any]:
        _validate("greengrassv2", "CreateDeployment", request)
        self.before_create(request)  # a test may hold this call to order a race
        with self._lock:
            token = request.get("clientToken")
            if token in self.tokens:  # idempotent: the same request again
                existing = self.deployments[self.tokens[token]]
                return {"deploymentId": existing["deploymentId"], "iotJobId": existing["iotJobId"]}
            number = next(self._ids)
            deployment_id, job_id = f"d-{number}", f"job-{number}"
            target = request["targetArn"]
            previous = self.latest.get(target)
            if previous is not None:  # the new deployment revises the previous one; its job is cancelled
                self.deployments[previous]["deploymentStatus"] = "INACTIVE"
                self.jobs[self.deployments[previous]["iotJobId"]]["status"] = "CANCELED"
            self.deployments[deployment_id] = {
                "deploymentId": deployment_id,
                "targetArn": target,
                "deploymentName": request.get("deploymentName"),
                "components": copy.deepcopy(request["components"]),
                "iotJobId": job_id,
                "deploymentStatus": "ACTIVE",
            }
            self.jobs[job_id] = {"status": "IN_PROGRESS", "looks": 0}
            self.latest[target] = deployment_id
            if token:
                self.tokens[token] = deployment_id
            self.created.append(self.deployments[deployment_id])
            return {"deploymentId": deployment_id, "iotJobId": job_id}

    def list_deployments(self, **params: Any) -> dict[str, Any]:
        _validate("greengrassv2", "ListDeployments", params)
        with self._lock:
            latest = self.latest.get(params["targetArn"])
            if latest is None:
                return {"deployments": []}
            deployment = self.deployments[latest]
            return {
                "deployments": [
                    {
                        "deploymentId": latest,
                        "targetArn": deployment["targetArn"],
                        "deploymentStatus": deployment["deploymentStatus"],
                        "isLatestForTarget": True,
                    }
                ]
            }

    def get_deployment(self, **params: Any) -> dict[str, Any]:
        _validate("greengrassv2", "GetDeployment", params)
        with self._lock:
            deployment = copy.deepcopy(self.deployments[params["deploymentId"]])
            deployment["isLatestForTarget"] = self.latest.get(deployment["targetArn"]) == deployment["deploymentId"]
            return deployment

    def describe_component(self, **params: Any) -> dict[str, Any]:
        _validate("greengrassv2", "DescribeComponent", params)
        if params["arn"] in self.deleted_components:
            raise ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "gone"}}, "DescribeComponent")
        return {"arn": params["arn"], "status": {"componentState": "DEPLOYABLE"}}

    def model_on_device(self, thing: str) -> str | None:
        """The model version the device's group's latest deployment carries (what the device would serve)."""
        for group, devices in self.groups.items():
            if thing in devices:
                return self.model_on_group(f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/{group}")
        return None

    def model_on_group(self, target: str) -> str | None:
        """The model component version of the group's latest deployment."""
        with self._lock:
            latest = self.latest.get(target)
            components = self.deployments[latest]["components"] if latest else {}
            return components[MODEL_COMPONENT]["componentVersion"] if MODEL_COMPONENT in components else None

    # -- iot --------------------------------------------------------------------------------------------
    def iot(self) -> FakeIot:
        return FakeIot(self)


@dataclass
class FakeIot:
    greengrass: FakeGreengrass

    def _group_of_job(self, job_id: str) -> str:
        target = next(d["targetArn"] for d in self.greengrass.deployments.values() if d["iotJobId"] == job_id)
        return str(target.rsplit("/", 1)[-1])

    def describe_job(self, **params: Any) -> dict[str, Any]:
        _validate("iot", "DescribeJob", params)
        with self.greengrass._lock:
            job = self.greengrass.jobs[params["jobId"]]
            devices = len(self.greengrass.groups.get(self._group_of_job(params["jobId"]), ()))
            job["looks"] += 1
            done = job["status"] == "IN_PROGRESS" and job["looks"] >= self.greengrass.polls_to_finish
            details = (
                {"numberOfSucceededThings": devices, "processingTargets": []}
                if done
                else {"numberOfQueuedThings": devices, "processingTargets": ["thinggroup"]}
            )
            if job["status"] == "CANCELED":
                details = {"numberOfCanceledThings": devices}
            return {"job": {"jobId": params["jobId"], "status": job["status"], "jobProcessDetails": details}}

    def list_job_executions_for_job(self, **params: Any) -> dict[str, Any]:
        _validate("iot", "ListJobExecutionsForJob", params)
        return {"executionSummaries": []}

    def describe_thing_group(self, **params: Any) -> dict[str, Any]:
        _validate("iot", "DescribeThingGroup", params)
        name = params["thingGroupName"]
        if name not in self.greengrass.groups:
            raise ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": name}}, "DescribeThingGroup")
        return {"thingGroupName": name, "thingGroupArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/{name}"}

    def list_things_in_thing_group(self, **params: Any) -> dict[str, Any]:
        _validate("iot", "ListThingsInThingGroup", params)
        return {"things": list(self.greengrass.groups.get(params["thingGroupName"], ()))}


@dataclass
class FakeCloudWatch:
    """GetMetricData on the devices' metrics: heartbeats with the version each device's group deploys, and
    `HEALTHY` figures, unless `not_loading` (the new model does not load: the device keeps the old one) or
    `figures` (a device's own) say otherwise; `failure` makes every call fail with that error code."""

    greengrass: FakeGreengrass
    not_loading: set[str] = field(default_factory=set)
    figures: dict[str, dict[str, float]] = field(default_factory=dict)
    failure: str | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)

    def get_metric_data(self, **params: Any) -> dict[str, Any]:
        _validate("cloudwatch", "GetMetricData", params)
        self.requests.append(params)
        if self.failure:
            raise ClientError({"Error": {"Code": self.failure, "Message": "no"}}, "GetMetricData")
        results = []
        for query in params["MetricDataQueries"]:
            metric = query["MetricStat"]["Metric"]
            dimensions = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
            thing = dimensions["Device"]
            value: float | None
            if metric["MetricName"] == "DeviceHeartbeats":
                serving = self.greengrass.model_on_device(thing)
                if thing in self.not_loading:
                    serving = None  # still on the version before
                value = 3.0 if serving == dimensions["ModelVersion"] else None
            else:
                value = {**HEALTHY, **self.figures.get(thing, {})}.get(metric["MetricName"])
            moments, values = ([params["StartTime"]], [value]) if value is not None else ([], [])
            if metric["MetricName"] == "FramesFailedTotal" and value is not None:
                # a running total since the component started (long before): OLD_FAILURES, then `value` more
                # at the window's end
                moments = [params["EndTime"], params["StartTime"]]
                values = [OLD_FAILURES + value, OLD_FAILURES]
            results.append({"Id": query["Id"], "StatusCode": "Complete", "Timestamps": moments, "Values": values})
        return {"MetricDataResults": results}


@dataclass
class EdgeWorkflow:
    """The state machine of one edge app, ready to start executions (inside `mock_aws`)."""

    template: Mapping[str, Any]
    greengrass: FakeGreengrass = field(default_factory=FakeGreengrass)
    stages: Sequence[Mapping[str, Any]] | None = None  # the functions' stages instead of the configuration's
    approval_timeout_seconds: int | None = None  # a short approval timeout instead of the stage's
    machine: MotoStateMachine = field(init=False)

    def __post_init__(self) -> None:
        self.cloudwatch = FakeCloudWatch(self.greengrass)
        self.clock = datetime.now(UTC)
        self.sagemaker = boto3.client("sagemaker", region_name=REGION)
        self.functions = lambda_handlers(self.template, HANDLER_MODULE)
        self.machine = MotoStateMachine(
            name="tag-inspect-edge-deployment",
            definition=self._definition(),
            dispatch=self._dispatch,
            topic=TOPIC,
            poll_seconds=0.05,
        )
        self.sfn = self.machine.sfn
        self.sagemaker.create_model_package_group(ModelPackageGroupName=GROUP)

    @property
    def calls(self) -> list[tuple[str, dict[str, Any]]]:
        return self.machine.calls

    def _definition(self) -> dict[str, Any]:
        substitutions = {f"{lid}.Arn": function_arn(handler) for lid, handler in self.functions.items()}
        substitutions.update(
            {
                f"{lid}.ComponentVersion": INFERENCE_VERSION
                for lid, resource in self.template["Resources"].items()
                if resource["Type"] == "Custom::GreengrassComponentVersion"
            }
        )
        (machine,) = asl.state_machines(self.template, substitutions).values()
        definition = copy.deepcopy(machine.definition)
        for _, state in asl.iter_states(definition):
            if state["Type"] == "Wait":
                state.pop("SecondsPath", None)
                state["Seconds"] = 0
            if state.get("Resource", "").endswith(":aws-sdk:greengrassv2:describeComponent"):
                state["Resource"] = function_arn(FAKE_DESCRIBE)
            if "TimeoutSecondsPath" in state and self.approval_timeout_seconds is not None:
                del state["TimeoutSecondsPath"]
                state["TimeoutSeconds"] = self.approval_timeout_seconds
        return definition

    # -- what moto's Lambda runs ------------------------------------------------------------------------
    def _dispatch(self, handler: str, event: dict[str, Any]) -> Any:
        if handler == FAKE_DESCRIBE:
            return {"Status": {"ComponentState": "DEPLOYABLE"}}
        if handler == "prepare_model":  # the component steps are tested on their own
            version = f"1.0.{event['package']['version']}"
            arn = f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:{MODEL_COMPONENT}:versions:{version}"
            return {"name": MODEL_COMPONENT, "version": version, "arn": arn, "created": True, "reused": False}
        context = LambdaContext(handler, seconds_left=120.0, memory_limit_in_mb=256)
        return getattr(handlers, handler)(event, context)

    def environment(self) -> dict[str, str]:
        """The environment variables of the functions that run for real, as the template gives them."""
        found: dict[str, str] = {}
        for logical_id, handler in self.functions.items():
            if handler in WORKFLOW_HANDLERS:
                variables = self.template["Resources"][logical_id]["Properties"]["Environment"]["Variables"]
                found.update({k: asl.render_token(v, {}) for k, v in variables.items()})
        if self.stages is not None:
            document = json.loads(found[ENVIRONMENT_VARIABLE])
            document["stages"] = [{**document["stages"][-1], **dict(stage)} for stage in self.stages]
            found[ENVIRONMENT_VARIABLE] = json.dumps(document)
        return found

    def _now(self) -> datetime:
        self.clock += timedelta(minutes=5)
        return self.clock

    def install(self, monkeypatch: Any) -> None:
        self.machine.install(monkeypatch)
        for name, value in self.environment().items():
            monkeypatch.setenv(name, value)
        clients = {
            "sagemaker": self.sagemaker,
            "greengrassv2": self.greengrass,
            "iot": self.greengrass.iot(),
            "stepfunctions": self.sfn,
            "cloudwatch": self.cloudwatch,
        }
        monkeypatch.setattr(handlers, "client", lambda service, region=None: clients[service])
        monkeypatch.setattr(handlers, "_now", self._now)

    # -- the model registry -------------------------------------------------------------------------------
    def register(self, status: str = "PendingManualApproval") -> str:
        arn = self.sagemaker.create_model_package(
            ModelPackageGroupName=GROUP,
            ModelApprovalStatus=status,
            InferenceSpecification={
                "Containers": [
                    {
                        "Image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/inference:1",
                        "ModelDataUrl": f"s3://tag-inspect-models-{ACCOUNT}-{REGION}/pipeline-runs/{time.time_ns()}/model.tar.gz",
                    }
                ],
                "SupportedContentTypes": ["image/jpeg"],
                "SupportedResponseMIMETypes": ["application/json"],
            },
        )["ModelPackageArn"]
        time.sleep(0.01)  # distinct creation times
        return str(arn)

    def approve(self, arn: str) -> None:
        self.sagemaker.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")

    # -- executions ---------------------------------------------------------------------------------------
    def start(self, execution_input: Mapping[str, Any], name: str) -> str:
        return self.machine.start(execution_input, name)

    def wait(self, execution_arn: str, timeout: float = 120.0) -> dict[str, Any]:
        return self.machine.wait(execution_arn, timeout)

    def visited(self, execution_arn: str) -> list[str]:
        return self.machine.visited(execution_arn)

    def notifications(self) -> list[dict[str, Any]]:
        """The notifications published since the last call: {"subject", "message"}."""
        return self.machine.messages()
