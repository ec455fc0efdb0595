"""Run the synthesized labeling state machine in moto's Step Functions executor, with the real Lambda code.

* The definition comes from the synthesized template (`tests/helpers/asl.state_machines`), with the
  functions' ARNs filled in.
* Each Lambda task runs the handler its function names (`labeling.runtime.handlers.<handler>`), in process,
  against moto S3 and Step Functions and the Feature Store double: moto's Lambda without Docker is
  told to dispatch instead of echoing the payload. A handler's exception becomes a Lambda function
  error named after the exception class, as in AWS.
* moto cannot run SageMaker's `createLabelingJob.sync` integration; those two states are pointed at a
  function that plays the job (`FakeGroundTruth.run_job`: the same CreateLabelingJob parameters,
  validated by botocore; the DescribeLabelingJob answer `.sync` returns). Everything else - Choice
  rules, loops, ResultSelector/ResultPath, Retry, Catch, the SNS notification - runs as defined.
* moto's ASL lexer reads the key `"RoleArn.$"` as the Credentials keyword and passes it on
  unevaluated (Step Functions evaluates it like any other key); in those two states the key is
  renamed for moto (`MOTO_ROLE_ARN_KEY`) and renamed back before the request is validated.
* Label Studio rounds wait in Wait states between progress checks; moto waits for real, so the
  harness shortens every Wait to `WAIT_SECONDS` (the definition's own value is checked by the tests).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
from moto.awslambda_simple.models import LambdaSimpleBackend

from labeling.runtime import handlers
from tests.helpers import asl
from tests.labeling.fakes import FakeFeatureStore, FakeGroundTruth

ACCOUNT, REGION = "123456789012", "eu-west-1"
FAKE_GROUND_TRUTH = "FakeGroundTruth"
LABELING_JOB_SYNC = "arn:aws:states:::sagemaker:createLabelingJob.sync"
MOTO_ROLE_ARN_KEY = "RoleArnForMoto"
WAIT_SECONDS = 1


class Context:
    """The parts of the Lambda context object the handlers use."""

    def __init__(self, function_name: str, seconds: float) -> None:
        self.function_name = function_name
        self.seconds = seconds
        self.aws_request_id = "test-request"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function_name}"
        self.memory_limit_in_mb = 1024

    def get_remaining_time_in_millis(self) -> int:
        return int(self.seconds * 1000)


def lambda_functions(template: Mapping[str, Any]) -> dict[str, str]:
    """Logical id -> handler name of the labeling functions in a template."""
    return {
        logical_id: resource["Properties"]["Handler"].rsplit(".", 1)[1]
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Lambda::Function"
        and resource["Properties"]["Handler"].startswith("labeling.runtime.handlers.")
    }


def runnable_definition(template: Mapping[str, Any]) -> dict[str, Any]:
    """The state machine's definition with ARNs filled in and the `.sync` jobs pointed at the job double."""
    substitutions = {
        f"{lid}.Arn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{lid}" for lid in lambda_functions(template)
    }
    (machine,) = asl.state_machines(template, substitutions).values()
    definition = machine.definition
    for _, state in asl.iter_states(definition):
        if state.get("Type") == "Wait":
            state["Seconds"] = WAIT_SECONDS
        if state.get("Resource") == LABELING_JOB_SYNC:
            state["Resource"] = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{FAKE_GROUND_TRUTH}"
            state["Parameters"][f"{MOTO_ROLE_ARN_KEY}.$"] = state["Parameters"].pop("RoleArn.$")
    return definition


@dataclass
class Workflow:
    template: Mapping[str, Any]
    s3: Any
    featurestore: FakeFeatureStore
    ground_truth: FakeGroundTruth
    seconds_per_call: Callable[[str], float] = lambda handler: 900.0
    before_call: Callable[[str, Mapping[str, Any]], None] = lambda handler, event: None
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sfn = boto3.client("stepfunctions", region_name=REGION)
        self.sns = boto3.client("sns", region_name=REGION)
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.handlers = lambda_functions(self.template)
        topic = self.sns.create_topic(Name="tag-inspect-labeling-notifications")["TopicArn"]
        self.queue = self.sqs.create_queue(QueueName="notifications")["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        self.sns.subscribe(
            TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"}
        )
        self.arn = self.sfn.create_state_machine(
            name="tag-inspect-labeling",
            definition=json.dumps(runnable_definition(self.template)),
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/labeling-state-machine",
        )["stateMachineArn"]
        self._lock = threading.Lock()

    def _invoke(self, function_name: str, body: Any) -> tuple[Any, str | None]:
        event = json.loads(body)
        name = function_name.rsplit(":", 1)[-1]
        handler = FAKE_GROUND_TRUTH if name == FAKE_GROUND_TRUTH else self.handlers[name]
        with self._lock:
            self.calls.append((handler, event))
        try:
            self.before_call(handler, event)
            if handler == FAKE_GROUND_TRUTH:
                event["RoleArn"] = event.pop(MOTO_ROLE_ARN_KEY)
                return self.ground_truth.run_job(event), None
            return getattr(handlers, handler)(event, Context(name, self.seconds_per_call(handler))), None
        except Exception as error:
            return {"errorType": type(error).__name__, "errorMessage": str(error)}, type(error).__name__

    def install(self, monkeypatch: Any, config_json: str, **clients: Any) -> None:
        """Route moto's Lambda invocations to the handlers and give the handlers their clients."""
        workflow = self

        def invoke(*args: Any) -> bytes:
            # LambdaSimpleBackend.invoke(self, function_name, qualifier, body, headers, response_headers)
            _backend, function_name, _qualifier, body, _headers, response_headers = args
            payload, error = workflow._invoke(function_name, body)
            if error:
                response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps(payload).encode()

        monkeypatch.setattr(LambdaSimpleBackend, "invoke", invoke)
        monkeypatch.setenv("LABELING_CONFIG", config_json)
        handlers._config.cache_clear()
        available = {
            "s3": self.s3,
            "sagemaker-featurestore-runtime": self.featurestore,
            "stepfunctions": self.sfn,
            "sagemaker": boto3.client("sagemaker", region_name=REGION),  # the model registry (pre-labels)
            **clients,
        }
        monkeypatch.setattr(handlers, "_client", available.__getitem__)

    def start(self, name: str) -> str:
        return self.sfn.start_execution(stateMachineArn=self.arn, name=name, input=json.dumps({"trigger": "test"}))[
            "executionArn"
        ]

    def wait(self, execution_arn: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            described = self.sfn.describe_execution(executionArn=execution_arn)
            if described["status"] != "RUNNING":
                return described
            time.sleep(0.2)
        raise AssertionError(f"execution {execution_arn} still running after {timeout} s")

    def run(self, name: str = "round-1") -> dict[str, Any]:
        return self.wait(self.start(name))

    def history(self, execution_arn: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for page in self.sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
            events.extend(page["events"])
        return events

    def visited(self, execution_arn: str) -> list[str]:
        """Names of the states the execution entered, in order."""
        return [
            details["name"]
            for event in self.history(execution_arn)
            for key, details in event.items()
            if key == "stateEnteredEventDetails"
        ]

    def notifications(self) -> list[str]:
        messages = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10).get("Messages", [])
        return [message["Body"] for message in messages]

    def handler_calls(self, handler: str) -> list[dict[str, Any]]:
        return [event for name, event in self.calls if name == handler]
